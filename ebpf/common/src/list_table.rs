//! The layout of the allow and block tables: two-choice buckets in an array.
//!
//! A hash-map lookup costs a chain of out-of-line kernel calls (hashing,
//! the bucket walk, a key compare), each paying the return-thunk mitigation;
//! an array-map lookup is inlined by the verifier. So each list lives in an
//! array of [`Slot`]s grouped in buckets of [`WAYS`], and a key sits in one
//! of two buckets chosen by a keyed hash: a lookup reads at most 2 x
//! [`WAYS`] slots however long the list is.
//!
//! The agent places keys (in the emptier of their two buckets) and sizes the
//! table at twice its capacity, so both buckets are full for about one key
//! in 100,000. Such a key goes to the table's spill hash map, and a bit per
//! bucket (the spill flags) tells a lookup that missed whether to look there.
//!
//! Writes keep every slot consistent for a concurrent reader: a new key is
//! written whole without [`USED`] and then marked, and a removal only clears
//! the mark.
use crate::{
    abi::{ListEntry, V4Key, V6Key},
    addr::mix,
};

/// Slots per bucket.
pub const WAYS: u32 = 4;

/// Set in a stored key's `prefix_len` while its slot holds it; a zeroed
/// slot would otherwise read as the key of `0.0.0.0/0`.
pub const USED: u32 = 1 << 8;

/// One slot of a list table: the entry, then its key (so a reader that
/// finds the key marked finds the entry already written).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot<K> {
    pub entry: ListEntry,
    pub key: K,
}

pub type V4Slot = Slot<V4Key>;
pub type V6Slot = Slot<V6Key>;

const _: () = {
    assert!(core::mem::size_of::<V4Slot>() == 24);
    assert!(core::mem::size_of::<V6Slot>() == 40);
};

/// A key a list table holds. The mark lives in the key's prefix length,
/// which every key type has.
pub trait TableKey: Copy {
    /// A keyed hash of the key as given (without [`USED`]).
    fn table_hash(&self, seed: u64) -> u64;
    /// Equal in every stored bit, the mark included.
    fn same(&self, other: &Self) -> bool;
    fn prefix_len_mut(&mut self) -> &mut u32;
    fn prefix_len(&self) -> u32;

    /// The key with [`USED`] set or cleared.
    #[inline(always)]
    fn marked(mut self, used: bool) -> Self {
        let len = self.prefix_len_mut();
        *len = if used { *len | USED } else { *len & !USED };
        self
    }

    #[inline(always)]
    fn is_used(&self) -> bool {
        self.prefix_len() & USED != 0
    }
}

impl V4Key {
    /// The key as one word: the prefix length, then the address.
    #[inline(always)]
    fn word(&self) -> u64 {
        self.prefix_len as u64 | (u32::from_ne_bytes(self.addr) as u64) << 32
    }
}

impl TableKey for V4Key {
    #[inline(always)]
    fn table_hash(&self, seed: u64) -> u64 {
        mix(seed ^ self.marked(false).word())
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        self.word() == other.word()
    }

    #[inline(always)]
    fn prefix_len_mut(&mut self) -> &mut u32 {
        &mut self.prefix_len
    }

    #[inline(always)]
    fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
}

impl TableKey for V6Key {
    #[inline(always)]
    fn table_hash(&self, seed: u64) -> u64 {
        let len = (self.prefix_len & !USED) as u64;
        mix(mix(mix(seed ^ len) ^ self.addr.words[0]) ^ self.addr.words[1])
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        // One test of all the words: a branch per word would multiply the
        // paths the verifier walks.
        let head = |k: &Self| k.prefix_len as u64 | (k.pad as u64) << 32;
        (head(self) ^ head(other)
            | (self.addr.words[0] ^ other.addr.words[0])
            | (self.addr.words[1] ^ other.addr.words[1]))
            == 0
    }

    #[inline(always)]
    fn prefix_len_mut(&mut self) -> &mut u32 {
        &mut self.prefix_len
    }

    #[inline(always)]
    fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
}

/// Buckets for a table of `capacity` entries: a power of two, with twice as
/// many slots as entries.
pub fn buckets_for(capacity: u32) -> u32 {
    (capacity.max(WAYS).next_power_of_two() / 2).max(2)
}

/// Words of the spill flags of a table of `buckets` buckets.
pub const fn flag_words(buckets: u32) -> u32 {
    buckets.div_ceil(64)
}

/// The key's two buckets (`mask` is the bucket count minus one). A lookup
/// reads the first, then the second.
#[inline(always)]
pub fn buckets(hash: u64, mask: u32) -> [u32; 2] {
    [hash as u32 & mask, (hash >> 32) as u32 & mask]
}

/// The agent's one-byte summary of a stored key (never 0, which marks a
/// free slot): a slot whose summary differs cannot hold the key.
pub fn fingerprint(hash: u64) -> u8 {
    ((hash >> 24) as u8).max(1)
}

/// The word of the spill flags holding `bucket`'s bit, and the bit.
#[inline(always)]
pub fn flag_slot(bucket: u32) -> (u32, u64) {
    (bucket >> 6, 1u64 << (bucket & 63))
}

/// Looks `key` up: the slots of its two buckets, then, if the first
/// bucket's spill flag is set, the spill map. `slot` reads a slot by index,
/// `flag` a word of the spill flags, `spill` the spill map. A slot that
/// cannot be read, impossible while the configured mask matches the map's
/// size, is skipped.
///
/// The kernel runs this as a global function, verified once on its own, so
/// the search may return from any slot: the paths it adds are not multiplied
/// through the caller's.
#[inline(always)]
pub fn find<'a, K: TableKey + 'a>(
    key: &K,
    seed: u64,
    mask: u32,
    slot: impl Fn(u32) -> Option<&'a Slot<K>>,
    flag: impl Fn(u32) -> Option<u64>,
    spill: impl FnOnce(&K) -> Option<ListEntry>,
) -> Option<ListEntry> {
    let hash = key.table_hash(seed);
    let want = key.marked(true);
    let [first, second] = buckets(hash, mask);
    for bucket in [first, second] {
        for way in 0..WAYS {
            if let Some(s) = slot(bucket * WAYS + way) {
                if s.key.same(&want) {
                    return Some(s.entry);
                }
            }
        }
    }
    let (word, bit) = flag_slot(first);
    // A flag word that cannot be read means look, never skip.
    if flag(word).is_none_or(|w| w & bit != 0) {
        spill(key)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4_key;

    #[test]
    fn a_zeroed_slot_holds_no_key() {
        let zero = Slot::<V4Key>::default();
        assert!(!zero.key.is_used());
        let all = v4_key([0, 0, 0, 0], 0);
        assert!(!zero.key.same(&all.marked(true)));
    }

    #[test]
    fn the_mark_does_not_change_the_hash() {
        let k = v4_key([192, 0, 2, 1], 32);
        assert_eq!(k.table_hash(7), k.marked(true).table_hash(7));
        assert!(k.marked(true).is_used());
        assert!(!k.marked(true).marked(false).is_used());
        assert_eq!(k.marked(true).marked(false), k);
    }

    #[test]
    fn sizes_give_half_full_tables_at_capacity() {
        assert_eq!(buckets_for(1 << 20) * WAYS, 1 << 21);
        assert_eq!(buckets_for(1000) * WAYS, 2048);
        assert_eq!(buckets_for(0), 2);
        assert_eq!(flag_words(2), 1);
        assert_eq!(flag_words(1 << 19), 1 << 13);
    }
}
