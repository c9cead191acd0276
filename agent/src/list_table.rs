//! The agent's side of one list table (`rampart_common::list_table`): it
//! places keys, and remembers a one-byte fingerprint per slot so that it
//! finds a key's slot without reading the table back (a read is only needed
//! to confirm a fingerprint match).
//!
//! Every write keeps each slot consistent for the program reading it at the
//! same time: a new key goes in whole but unmarked, then marked; a removal
//! clears only the mark; a spilled key is in the spill map before its
//! bucket's flag is set, and its flag is cleared after the last one left.
use std::{collections::HashMap as StdHashMap, os::fd::OwnedFd};

use aya::maps::{Array, HashMap, MapData, MapError};
use rampart_common::{
    abi::{ListEntry, V4Key, V6Key},
    list_table::{Slot, TableKey, WAYS, buckets, fingerprint, flag_slot},
};
// Slot indexes come from a keyed hash, so a fast unkeyed hasher is safe
// for maps keyed by them, and a million-entry import spends far less in it.
use rustc_hash::{FxHashMap, FxHashSet};

use crate::bpf_sys::{DatapathError, batch_update, map_err, read_array};

/// Where a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Slot(u32),
    Spill,
}

/// A key type of a list table.
pub(crate) trait Key: TableKey + aya::Pod + Default + Sync + Eq + std::hash::Hash {}
impl Key for V4Key {}
impl Key for V6Key {}

/// The maps of one table, as taken from the loaded object, with duplicates
/// of the array maps' fds for batch operations (aya has none).
pub(crate) struct TableMaps<K: Key>
where
    Slot<K>: aya::Pod,
{
    pub slots: Array<MapData, Slot<K>>,
    pub slots_fd: OwnedFd,
    pub spill: HashMap<MapData, K, ListEntry>,
    pub flags: Array<MapData, u64>,
    pub flags_fd: OwnedFd,
}

/// How one change reaches a table's slots. A large change maps the array
/// (the map is memory-mappable) and reads and writes slots in place, with no
/// syscall per slot, which a million-entry import or a feed rewriting what
/// it holds would otherwise pay; the mapping is dropped when the change ends,
/// and with it the table's pages from the agent's resident memory. Mapping
/// inserts every page of the table, so a small change (a `block add`) uses a
/// syscall per slot instead.
struct Change<K> {
    mapped: bool,
    mapping: Option<Mapping<K>>,
}

/// Keys a change must touch before it maps the table.
const MAP_AT: usize = 1024;

impl<K> Change<K> {
    fn new(keys: usize) -> Self {
        Self {
            mapped: keys >= MAP_AT,
            mapping: None,
        }
    }
}

/// A read-write shared mapping of a slot array.
struct Mapping<K> {
    ptr: std::ptr::NonNull<Slot<K>>,
    len: usize,
    bytes: usize,
}

impl<K> Mapping<K> {
    fn map(fd: &OwnedFd, len: u32, name: &str) -> Result<Self, DatapathError> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len as usize * std::mem::size_of::<Slot<K>>()).next_multiple_of(page.max(1));
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // that `bytes` fits the array.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DatapathError::os(
                format!("{name}: mapping the table failed"),
                std::io::Error::last_os_error(),
            ));
        }
        let ptr = std::ptr::NonNull::new(p.cast()).ok_or_else(|| {
            DatapathError::os(
                format!("{name}: mapping the table"),
                std::io::Error::other("mapped at address 0"),
            )
        })?;
        Ok(Self {
            ptr,
            len: len as usize,
            bytes,
        })
    }

    fn get(&self, i: u32) -> Option<Slot<K>>
    where
        Slot<K>: Copy,
    {
        let i = i as usize;
        // SAFETY: in bounds of the mapping, which lives as long as self.
        // Slots are written only on this agent's behalf: through this
        // mapping, or by the kernel in a BPF_MAP_UPDATE_BATCH call, which
        // returns before a change goes on (the program only reads them).
        // Both happen under the change's `&mut self`, never beside a read;
        // a volatile read of plain data is sound whatever it finds.
        (i < self.len).then(|| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
    }

    /// Writes a slot; an index outside the table is ignored (impossible:
    /// indexes come from the table's own mask).
    fn set(&self, i: u32, slot: Slot<K>) {
        let i = i as usize;
        if i < self.len {
            // SAFETY: i is in bounds of the mapping, which lives as long as
            // self. Besides this mapping only the kernel writes slots, in a
            // batch update the agent made and that has returned; the
            // program only reads them.
            unsafe { self.ptr.as_ptr().add(i).write_volatile(slot) };
        }
    }
}

impl<K> Drop for Mapping<K> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Orders slot writes: every write before it is visible to the program
/// before any write after it (a key is marked only once its slot is whole).
fn publish_writes() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

pub(crate) struct ListTable<K: Key>
where
    Slot<K>: aya::Pod,
{
    name: &'static str,
    maps: TableMaps<K>,
    seed: u64,
    mask: u32,
    capacity: u64,
    /// Per slot: 0 free, else the fingerprint of the key it holds.
    prints: Vec<u8>,
    /// First bucket -> keys of it in the spill map.
    spilled: FxHashMap<u32, u32>,
    len: u64,
}

/// Keys and entries (kernel key type) as a table reports them.
pub(crate) type Entries<K> = Vec<(K, ListEntry)>;

impl<K: Key> ListTable<K>
where
    Slot<K>: aya::Pod,
{
    /// Takes over a table's maps and learns where its keys are (a table
    /// pinned by an earlier agent keeps its contents). Returns the table and
    /// every key it holds.
    pub(crate) fn adopt(
        name: &'static str,
        maps: TableMaps<K>,
        seed: u64,
        capacity: u32,
    ) -> Result<(Self, Vec<K>), DatapathError> {
        let n = maps.slots.len();
        let count = n / WAYS;
        if count == 0 || !count.is_power_of_two() || !n.is_multiple_of(WAYS) {
            return Err(DatapathError::TableShape {
                table: name,
                slots: n,
                ways: WAYS,
            });
        }
        let mut t = Self {
            name,
            maps,
            seed,
            mask: count - 1,
            capacity: u64::from(capacity),
            prints: vec![0; n as usize],
            spilled: FxHashMap::default(),
            len: 0,
        };
        let keys = t.relearn()?;
        Ok((t, keys))
    }

    /// Learns from the kernel's maps where every key is, forgetting what the
    /// agent thought; returns every key. Also after a kernel write failed
    /// halfway through a change, so that the agent's view is the kernel's.
    fn relearn(&mut self) -> Result<Vec<K>, DatapathError> {
        let (name, seed) = (self.name, self.seed);
        self.prints.fill(0);
        self.spilled.clear();
        self.len = 0;
        let mut keys = Vec::new();
        // A key outside its two buckets (a table written with another seed)
        // can never be found: it is cleared rather than kept half there.
        let mut lost = Vec::new();
        let n = self.maps.slots.len();
        let (mask, prints, len) = (self.mask, &mut self.prints, &mut self.len);
        read_array(&self.maps.slots_fd, n, |i, s: &Slot<K>| {
            if !s.key.is_used() {
                return;
            }
            let hash = s.key.table_hash(seed);
            if buckets(hash, mask).contains(&(i / WAYS)) {
                prints[i as usize] = fingerprint(hash);
                *len += 1;
                keys.push(s.key.marked(false));
            } else {
                lost.push((i, unmarked(*s)));
            }
        })?;
        if !lost.is_empty() {
            tracing::warn!(
                table = name,
                keys = lost.len(),
                "clearing unreachable slots"
            );
            let (index, slots): (Vec<u32>, Vec<Slot<K>>) = lost.into_iter().unzip();
            batch_update(&self.maps.slots_fd, &index, &slots)?;
        }
        for k in self.maps.spill.keys() {
            let k = k.map_err(map_err(name))?;
            *self.spilled.entry(self.first_bucket(&k)).or_default() += 1;
            self.len += 1;
            keys.push(k);
        }
        // Written whole: the flags may come from an agent that stopped
        // between a spill and its flag.
        let words = self.maps.flags.len();
        let mut flags = vec![0u64; words as usize];
        for b in self.spilled.keys() {
            let (w, bit) = flag_slot(*b);
            if let Some(f) = flags.get_mut(w as usize) {
                *f |= bit;
            }
        }
        let index: Vec<u32> = (0..words).collect();
        batch_update(&self.maps.flags_fd, &index, &flags)?;
        Ok(keys)
    }

    /// After a kernel write failed mid-change: relearns the kernel's state
    /// and returns the write's error.
    fn write_failed(&mut self, err: DatapathError) -> DatapathError {
        if let Err(e) = self.relearn() {
            tracing::error!(table = self.name, error = %e, "relearning the table after a failed write");
        }
        err
    }

    /// The bucket count minus one, for the program's configuration.
    pub(crate) fn mask(&self) -> u32 {
        self.mask
    }

    fn first_bucket(&self, key: &K) -> u32 {
        buckets(key.table_hash(self.seed), self.mask)[0]
    }

    /// Where `key` is; `pending` holds slots written in this call but not
    /// yet in the kernel.
    fn locate(
        &self,
        key: &K,
        pending: &FxHashMap<u32, Slot<K>>,
        change: &mut Change<K>,
    ) -> Result<Option<(Place, ListEntry)>, DatapathError> {
        let hash = key.table_hash(self.seed);
        let print = fingerprint(hash);
        let want = key.marked(true);
        let [first, second] = buckets(hash, self.mask);
        for bucket in [first, second] {
            for way in 0..WAYS {
                let i = bucket * WAYS + way;
                if self.prints[i as usize] != print {
                    continue;
                }
                let s = match pending.get(&i) {
                    Some(s) => *s,
                    None => self.read_slot(i, change)?,
                };
                if s.key.same(&want) {
                    return Ok(Some((Place::Slot(i), s.entry)));
                }
            }
        }
        if self.spilled.contains_key(&first) {
            match self.maps.spill.get(key, 0) {
                Ok(e) => return Ok(Some((Place::Spill, e))),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(self.name)(e)),
            }
        }
        Ok(None)
    }

    /// The table's mapping for this change (see [`Change`]).
    fn mapping<'c>(&self, change: &'c mut Change<K>) -> Result<&'c Mapping<K>, DatapathError> {
        match &mut change.mapping {
            Some(m) => Ok(m),
            none => Ok(none.insert(Mapping::map(
                &self.maps.slots_fd,
                self.maps.slots.len(),
                self.name,
            )?)),
        }
    }

    fn read_slot(&self, i: u32, change: &mut Change<K>) -> Result<Slot<K>, DatapathError> {
        if change.mapped {
            return Ok(self.mapping(change)?.get(i).unwrap_or_default());
        }
        self.maps.slots.get(&i, 0).map_err(map_err(self.name))
    }

    /// Writes one group of slots; all of it is visible to the program before
    /// anything written after it (a fence, or the end of the syscall).
    fn write_slots(
        &self,
        change: &mut Change<K>,
        slots: impl Iterator<Item = (u32, Slot<K>)>,
    ) -> Result<(), DatapathError> {
        if change.mapped {
            let map = self.mapping(change)?;
            for (i, s) in slots {
                map.set(i, s);
            }
            publish_writes();
            return Ok(());
        }
        let (index, slots): (Vec<u32>, Vec<Slot<K>>) = slots.unzip();
        batch_update(&self.maps.slots_fd, &index, &slots)
    }

    pub(crate) fn get(&self, key: &K) -> Result<Option<ListEntry>, DatapathError> {
        Ok(self
            .locate(key, &FxHashMap::default(), &mut Change::new(1))?
            .map(|(_, e)| e))
    }

    /// A free slot in the emptier of the key's buckets (the first on a tie).
    fn free_slot(&self, hash: u64) -> Option<u32> {
        let free = |b: u32| (0..WAYS).filter(move |w| self.prints[(b * WAYS + w) as usize] == 0);
        let [first, second] = buckets(hash, self.mask);
        let bucket = if free(second).count() > free(first).count() {
            second
        } else {
            first
        };
        free(bucket).next().map(|w| bucket * WAYS + w)
    }

    /// Adds or replaces entries; returns, per item, whether its key is new
    /// to the table. Nothing changes if the new keys would pass capacity.
    pub(crate) fn insert_many(
        &mut self,
        items: &[(K, ListEntry)],
    ) -> Result<Vec<bool>, DatapathError> {
        let mut change = Change::new(items.len());
        // Sized up front: growing a million-entry map copies it and leaves
        // the heap fragmented, which the agent's resident memory shows.
        let hasher = rustc_hash::FxBuildHasher;
        let mut pending: FxHashMap<u32, Slot<K>> =
            FxHashMap::with_capacity_and_hasher(items.len(), hasher);
        let mut fresh: FxHashSet<u32> = FxHashSet::with_capacity_and_hasher(items.len(), hasher);
        let mut spills: StdHashMap<K, ListEntry> = StdHashMap::new();
        let mut new_spills: Vec<K> = Vec::new();
        let mut is_new = Vec::with_capacity(items.len());
        let mut added = 0u64;
        for (key, entry) in items {
            let key = key.marked(false);
            let stored = Slot {
                entry: *entry,
                key: key.marked(true),
            };
            let place = match spills.get(&key) {
                Some(_) => Some(Place::Spill),
                None => self.locate(&key, &pending, &mut change)?.map(|(p, _)| p),
            };
            match place {
                Some(Place::Slot(i)) => {
                    pending.insert(i, stored);
                    is_new.push(false);
                }
                Some(Place::Spill) => {
                    spills.insert(key, *entry);
                    is_new.push(false);
                }
                None => {
                    if !crate::config::fits(self.len + added, 1, self.capacity) {
                        self.undo(&fresh, &new_spills);
                        return Err(DatapathError::TableFull {
                            table: self.name,
                            capacity: self.capacity,
                        });
                    }
                    let hash = key.table_hash(self.seed);
                    match self.free_slot(hash) {
                        Some(i) => {
                            self.prints[i as usize] = fingerprint(hash);
                            pending.insert(i, stored);
                            fresh.insert(i);
                        }
                        None => {
                            *self.spilled.entry(self.first_bucket(&key)).or_default() += 1;
                            spills.insert(key, *entry);
                            new_spills.push(key);
                        }
                    }
                    added += 1;
                    is_new.push(true);
                }
            }
        }
        self.len += added;
        let written = self.write_inserts(&mut change, &pending, &fresh, &spills, &new_spills);
        written.map_err(|e| self.write_failed(e))?;
        Ok(is_new)
    }

    /// The kernel half of `insert_many`: new slots whole but unmarked, then
    /// every slot marked, then spilled keys and their flags.
    fn write_inserts(
        &mut self,
        change: &mut Change<K>,
        pending: &FxHashMap<u32, Slot<K>>,
        fresh: &FxHashSet<u32>,
        spills: &StdHashMap<K, ListEntry>,
        new_spills: &[K],
    ) -> Result<(), DatapathError> {
        self.write_slots(
            change,
            pending
                .iter()
                .filter(|(i, _)| fresh.contains(i))
                .map(|(i, s)| (*i, unmarked(*s))),
        )?;
        self.write_slots(change, pending.iter().map(|(i, s)| (*i, *s)))?;
        for (k, e) in spills {
            self.maps
                .spill
                .insert(k, e, 0)
                .map_err(map_err(self.name))?;
        }
        let buckets: Vec<u32> = new_spills.iter().map(|k| self.first_bucket(k)).collect();
        self.write_flags(&buckets)
    }

    /// Forgets the placements of an insert that is refused.
    fn undo(&mut self, fresh: &FxHashSet<u32>, new_spills: &[K]) {
        for i in fresh {
            self.prints[*i as usize] = 0;
        }
        for k in new_spills {
            self.unspill(self.first_bucket(k));
        }
    }

    /// One spilled key fewer in `bucket`; true when it has none left.
    fn unspill(&mut self, bucket: u32) -> bool {
        let Some(n) = self.spilled.get_mut(&bucket) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.spilled.remove(&bucket);
        true
    }

    /// Removes keys; returns, per key, whether the table held it.
    pub(crate) fn remove_many(&mut self, keys: &[K]) -> Result<Vec<bool>, DatapathError> {
        let mut change = Change::new(keys.len());
        let mut pending: FxHashMap<u32, Slot<K>> =
            FxHashMap::with_capacity_and_hasher(keys.len(), rustc_hash::FxBuildHasher);
        let mut emptied = Vec::new();
        let mut removed = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.marked(false);
            match self.locate(&key, &pending, &mut change)? {
                Some((Place::Slot(i), entry)) => {
                    pending.insert(i, Slot { entry, key });
                    self.prints[i as usize] = 0;
                    removed.push(true);
                }
                Some((Place::Spill, _)) => {
                    if let Err(e) = self.maps.spill.remove(&key) {
                        return Err(self.write_failed(map_err(self.name)(e)));
                    }
                    let b = self.first_bucket(&key);
                    if self.unspill(b) {
                        emptied.push(b);
                    }
                    removed.push(true);
                }
                None => removed.push(false),
            }
        }
        self.len -= removed.iter().filter(|r| **r).count() as u64;
        let written = self
            .write_slots(&mut change, pending.iter().map(|(i, s)| (*i, *s)))
            .and_then(|()| self.write_flags(&emptied));
        written.map_err(|e| self.write_failed(e))?;
        Ok(removed)
    }

    /// Rewrites the flag words holding these buckets' bits from `spilled`.
    fn write_flags(&self, buckets: &[u32]) -> Result<(), DatapathError> {
        let mut words: Vec<u32> = buckets.iter().map(|b| flag_slot(*b).0).collect();
        words.sort_unstable();
        words.dedup();
        let values: Vec<u64> = words
            .iter()
            .map(|w| {
                (0..64)
                    .map(|bit| w * 64 + bit)
                    .filter(|b| self.spilled.contains_key(b))
                    .fold(0u64, |acc, b| acc | flag_slot(b).1)
            })
            .collect();
        batch_update(&self.maps.flags_fd, &words, &values)
    }

    /// Every key and entry.
    pub(crate) fn entries(&self) -> Result<Entries<K>, DatapathError> {
        let mut out = Vec::with_capacity(self.len as usize);
        read_array(
            &self.maps.slots_fd,
            self.maps.slots.len(),
            |_, s: &Slot<K>| {
                if s.key.is_used() {
                    out.push((s.key.marked(false), s.entry));
                }
            },
        )?;
        for kv in self.maps.spill.iter() {
            out.push(kv.map_err(map_err(self.name))?);
        }
        Ok(out)
    }

    /// Keys in the spill map (for tests and metrics).
    pub(crate) fn spilled(&self) -> u64 {
        self.spilled.values().map(|n| u64::from(*n)).sum()
    }
}

fn unmarked<K: TableKey>(mut s: Slot<K>) -> Slot<K> {
    s.key = s.key.marked(false);
    s
}
