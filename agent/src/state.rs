//! The agent's state and every change to it. The daemon, the control API and
//! the reload path all go through here, so a rule is enforced in one place:
//! validate everything first, then change the kernel, config entries before
//! removals, never an empty moment.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use rampart_common::{
    abi::{BanEntry, Config as KernelConfig, ListEntry, Policy, config_flag, entry_flag},
    decide::List,
};
use serde::Serialize;

pub use crate::api::{BanRow, EntryRow, MAX_REASON_BYTES, MAX_TTL, ReloadStatus};
use crate::{
    clock,
    config::{ListFull, Malformed, PerFamily, Validated},
    datapath::{Datapath, DatapathError},
    host,
    persist::{SavedBan, State},
    policy,
    prefix::Prefix,
    syncookies::{self, HostCookies},
};

/// Checks what a caller may set on a runtime entry.
fn check_runtime_entry(ttl: Option<Duration>, reason: Option<&str>) -> Result<(), CoreError> {
    if let Some(t) = ttl {
        if t.is_zero() || t > MAX_TTL {
            return Err(CoreError::Invalid(format!(
                "ttl must be 1 second to 10 years, got {} s (omit it for no expiry)",
                t.as_secs()
            )));
        }
    }
    if let Some(r) = reason {
        if r.len() > MAX_REASON_BYTES {
            return Err(CoreError::Invalid(format!(
                "reason is {} bytes; at most {MAX_REASON_BYTES} are kept with an entry",
                r.len()
            )));
        }
    }
    Ok(())
}

/// Where a list entry comes from, as the kernel entry records it (for
/// `explain` and the drop counters) and the `origin` metrics label shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Config = 1,
    Cli = 2,
    Feed = 3,
    Protected = 4,
    Crowdsec = 5,
}

impl Origin {
    /// The id stored in `ListEntry::origin`.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The `origin` label of the list metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Cli => "cli",
            Self::Feed => "feed",
            Self::Protected => "protected",
            Self::Crowdsec => CROWDSEC_ORIGIN,
        }
    }
}

/// The runtime origin of entries that follow CrowdSec decisions.
pub const CROWDSEC_ORIGIN: &str = "crowdsec";

mod feed_swap;
mod flood;
mod readings;
pub use feed_swap::FeedApplied;

/// A runtime (CLI or feed) entry. Origin and reason are shared by all the
/// entries of one request: a million-entry import holds one copy of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEntry {
    pub origin: Arc<str>,
    /// `CLOCK_MONOTONIC` deadline, as in the kernel: a wall-clock jump
    /// neither ends nor extends the entry.
    pub deadline_ns: Option<u64>,
    pub reason: Option<Arc<str>>,
    pub added: u64,
}

/// A runtime entry to add: prefix, expiry (Unix seconds; None never) and reason.
pub type NewEntry = (Prefix, Option<u64>, Option<Arc<str>>);

impl RuntimeEntry {
    /// The expiry in wall-clock Unix seconds, as of now.
    pub fn expires(&self) -> Option<u64> {
        self.deadline_ns.map(clock::unix_of_mono)
    }
}

/// Why an entry is in a list; it stays while any source remains.
#[derive(Clone, Debug, Default)]
struct Sources {
    config: bool,
    protected: bool,
    runtime: Option<RuntimeEntry>,
    /// One bit per feed slot (see `Core::feed_slots`).
    feeds: u64,
}

/// The kernel entry a key's sources call for; None when it has none.
fn entry_for(kind: List, s: &Sources, blocklist_dry_run: bool) -> Option<ListEntry> {
    let origin = s.origin()?;
    // Only an entry held by its runtime source alone expires.
    let expires_ns = match &s.runtime {
        Some(r) if !s.permanent() => r.deadline_ns.unwrap_or(0),
        _ => 0,
    };
    let dry = kind == List::Block && blocklist_dry_run;
    Some(ListEntry {
        expires_ns,
        origin: origin.id(),
        flags: if dry { entry_flag::DRY_RUN } else { 0 },
    })
}

impl Sources {
    fn is_empty(&self) -> bool {
        !self.config && !self.protected && self.runtime.is_none() && self.feeds == 0
    }

    /// Held by something that does not expire.
    fn permanent(&self) -> bool {
        self.config || self.protected || self.feeds != 0
    }

    /// The strongest source, which names the entry's origin everywhere:
    /// protected, then config, then a feed, then the runtime entry.
    fn origin(&self) -> Option<Origin> {
        if self.protected {
            Some(Origin::Protected)
        } else if self.config {
            Some(Origin::Config)
        } else if self.feeds != 0 {
            Some(Origin::Feed)
        } else {
            let r = self.runtime.as_ref()?;
            Some(if &*r.origin == CROWDSEC_ORIGIN {
                Origin::Crowdsec
            } else {
                Origin::Cli
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Refused(String),
    /// The request itself is wrong (a value out of its range).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// A borrowed `SavedEntry`.
#[derive(Serialize)]
struct SavedEntryRef<'a> {
    list: List,
    prefix: Prefix,
    origin: &'a str,
    expires: Option<u64>,
    reason: Option<&'a str>,
    added: u64,
}

pub struct Core {
    pub dp: Datapath,
    pub cfg: Validated,
    entries: BTreeMap<(List, Prefix), Sources>,
    protected: Vec<Prefix>,
    reload: ReloadStatus,
    pub started: Instant,
    /// Set when runtime state changed and the state file is behind.
    pub dirty: bool,
    pub refused_total: u64,
    pub policy_names: Vec<String>,
    /// Rate-table slots in use, as last counted by housekeeping.
    rate_slots_used: u64,
    /// Feed name to its bit in `Sources::feeds`.
    feed_slots: BTreeMap<String, u32>,
    /// Runtime entries with a deadline, soonest first.
    expiring: BTreeSet<(u64, List, Prefix)>,
    entry_counts: BTreeMap<(List, &'static str, Origin), u64>,
    /// Whether the kernel will issue the program's SYN cookies.
    pub syn_cookies: HostCookies,
    /// Verified sources, as last counted by housekeeping.
    pub verified_sources: u64,
    /// Policies whose flood defence the traffic detector has engaged.
    defended: std::collections::BTreeSet<String>,
}

impl Core {
    /// Writes the configured policies to the program, with the traffic
    /// detector's defence over those it defends. Policies keep their index,
    /// so unchanged ones keep their buckets.
    fn write_policies(&mut self) -> Result<Vec<Policy>, CoreError> {
        let share = self.cfg.config.detect.defend_budget_share;
        let (names, abi): (Vec<String>, Vec<Policy>) =
            policy::kernel_policies(self.cfg.config.policies.iter().map(|p| p.get_ref()))
                .into_iter()
                .map(|(name, p)| {
                    let p = if self.defended.contains(&name) {
                        policy::defended(&p, share)
                    } else {
                        p
                    };
                    (name, p)
                })
                .unzip();
        self.dp.set_policies(&abi)?;
        self.policy_names = names;
        Ok(abi)
    }

    /// Engages the flood defence of exactly the policies in `names` (the
    /// traffic detector's `defend`), releasing the others.
    pub fn set_defended(
        &mut self,
        names: std::collections::BTreeSet<String>,
    ) -> Result<(), CoreError> {
        if names == self.defended {
            return Ok(());
        }
        self.defended = names;
        self.write_policies().map(|_| ())
    }

    /// The config file's last load or reload, for status and metrics.
    pub fn reload_status(&self) -> &ReloadStatus {
        &self.reload
    }

    /// Records the config the agent started with as its last good load.
    pub fn record_start_config(&mut self) {
        let now = clock::unix_now();
        self.reload.last_result = "ok".into();
        self.reload.last_success = now;
        self.reload.last_attempt = now;
    }

    /// Records a reload's outcome: the errors of a refused one, or success.
    pub fn record_reload(&mut self, result: &Result<(), Vec<String>>) {
        let now = clock::unix_now();
        self.reload.last_attempt = now;
        match result {
            Ok(()) => {
                self.reload.last_result = "ok".into();
                self.reload.last_success = now;
                self.reload.errors.clear();
                self.reload.ok_total += 1;
            }
            Err(errs) => {
                self.reload.last_result = "failed".into();
                self.reload.errors.clone_from(errs);
                self.reload.failed_total += 1;
            }
        }
    }

    /// Gives an attached interface its own counter slot. False when the
    /// kernel's tables have none for it: its packets count as "other".
    pub fn assign_iface_slot(&mut self, ifindex: u32, slot: u32) -> Result<bool, CoreError> {
        if ifindex >= rampart_common::abi::MAX_IFINDEX
            || slot >= rampart_common::abi::MAX_IFACE_SLOTS
        {
            return Ok(false);
        }
        self.dp.set_iface_slot(ifindex, slot)?;
        Ok(true)
    }

    /// Takes over a loaded data plane: rebuilds the registry from config and
    /// state, then applies the config.
    pub fn new(dp: Datapath, cfg: Validated) -> Result<Self, CoreError> {
        let mut core = Self {
            dp,
            cfg: cfg.clone(),
            entries: BTreeMap::new(),
            protected: Vec::new(),
            reload: ReloadStatus::default(),
            started: Instant::now(),
            dirty: false,
            refused_total: 0,
            policy_names: Vec::new(),
            rate_slots_used: 0,
            feed_slots: BTreeMap::new(),
            expiring: BTreeSet::new(),
            entry_counts: BTreeMap::new(),
            syn_cookies: HostCookies::NotUsed,
            verified_sources: 0,
            defended: std::collections::BTreeSet::new(),
        };
        core.apply(cfg, true)?;
        // Entries in the maps (re-adopted pins) that no source claims were
        // runtime entries of an earlier run: the state file restores them;
        // whatever it does not is dropped by `forget_unclaimed`.
        Ok(core)
    }

    pub fn protected(&self) -> &[Prefix] {
        &self.protected
    }

    /// The protected ranges `p` overlaps, comma-separated; None if none.
    pub fn protected_hit(&self, p: &Prefix) -> Option<String> {
        let hits: Vec<String> = self
            .protected
            .iter()
            .filter(|r| r.overlaps(p))
            .map(ToString::to_string)
            .collect();
        (!hits.is_empty()).then(|| hits.join(", "))
    }

    /// Applies a validated config. `initial`: at start-up (capacity is what
    /// the maps were created with, so any value is accepted).
    pub fn apply(&mut self, new: Validated, initial: bool) -> Result<(), CoreError> {
        if !initial && new.config.capacity != self.cfg.config.capacity {
            return Err(CoreError::Refused(
                "capacity settings changed: table sizes are fixed when the maps are created; restart the agent with `rampart agent --replace-maps` to apply them (runtime entries are restored from the state file)".into(),
            ));
        }
        let mut protected: Vec<Prefix> = new.protected.clone();
        if new.config.protected.include_host_addresses {
            for a in host::addresses() {
                if !protected.contains(&a) {
                    protected.push(a);
                }
            }
        }
        // Refuse a config whose blocklist would lock the host out.
        let mut lockouts = Vec::new();
        for b in &new.blocklist {
            if let Some(r) = protected.iter().find(|r| r.overlaps(b)) {
                lockouts.push(format!("blocklist entry {b} overlaps protected range {r}"));
            }
        }
        if !lockouts.is_empty() {
            self.refused_total += lockouts.len() as u64;
            return Err(CoreError::Refused(format!(
                "{}; protected addresses can never be blocked (remove the entry or narrow it)",
                lockouts.join("; ")
            )));
        }

        // Kernel-wide settings first, so new entries meet the new dry-run.
        let c = &new.config;
        self.dp.update_config(|k: &mut KernelConfig| {
            // Only dry-run: the list generation bit belongs to feed swaps.
            k.flags &= !config_flag::DRY_RUN;
            if c.agent.dry_run {
                k.flags |= config_flag::DRY_RUN;
            }
            k.malformed_pass = u32::from(c.agent.malformed == Malformed::Pass);
            k.sample_every = c.events.sample_every;
            k.sample_cap_per_sec = c.events.max_per_second;
            k.verified_ttl_ns = c.flood.verified_ttl.as_nanos() as u64;
        })?;
        self.dp.set_ban_exempt(&new.ban_exempt)?;
        let old_dry = self.cfg.config.blocklist.dry_run;
        self.cfg = new;

        // Additions before removals: no moment with a list missing entries.
        let mut want: HashMap<(List, Prefix), (bool, bool)> = HashMap::new();
        for p in &self.cfg.allowlist {
            want.entry((List::Allow, *p)).or_default().0 = true;
        }
        for p in &protected {
            want.entry((List::Allow, *p)).or_default().1 = true;
        }
        for p in &self.cfg.blocklist {
            want.entry((List::Block, *p)).or_default().0 = true;
        }
        for (key, (config, prot)) in &want {
            let s = self.entries.entry(*key).or_default();
            s.config = *config;
            s.protected = *prot;
        }
        let dry_changed = old_dry != self.cfg.config.blocklist.dry_run;
        let keys: Vec<_> = self.entries.keys().copied().collect();
        for key in &keys {
            if want.contains_key(key) || (dry_changed && key.0 == List::Block) {
                self.sync(*key)?;
            }
        }
        for key in keys {
            if !want.contains_key(&key) {
                if let Some(s) = self.entries.get_mut(&key) {
                    if s.config || s.protected {
                        s.config = false;
                        s.protected = false;
                        self.sync(key)?;
                    }
                }
            }
        }
        self.protected = protected;

        let abi = self.write_policies()?;
        let wanted = abi
            .iter()
            .any(|p| p.syn_cookies != rampart_common::abi::syn_cookies::OFF);
        let host = syncookies::prepare(
            Path::new(syncookies::SYSCTL),
            wanted,
            self.cfg.config.flood.manage_tcp_syncookies,
        );
        self.set_host_cookies(host)?;
        self.count_entries();
        Ok(())
    }

    /// Sets or clears `key`'s runtime source, keeping the expiry index in
    /// step. The only place a runtime source changes. Returns whether the
    /// key is new to the registry, and the kernel entry its sources now call
    /// for (one registry lookup: imports do this a million times).
    fn set_runtime(
        &mut self,
        key: (List, Prefix),
        runtime: Option<RuntimeEntry>,
    ) -> (bool, Option<ListEntry>) {
        let slot = self.entries.entry(key);
        let is_new = matches!(slot, std::collections::btree_map::Entry::Vacant(_));
        let s = slot.or_default();
        if let Some(d) = s.runtime.as_ref().and_then(|r| r.deadline_ns) {
            self.expiring.remove(&(d, key.0, key.1));
        }
        if let Some(d) = runtime.as_ref().and_then(|r| r.deadline_ns) {
            self.expiring.insert((d, key.0, key.1));
        }
        s.runtime = runtime;
        let dry = self.cfg.config.blocklist.dry_run;
        (is_new, entry_for(key.0, s, dry))
    }

    /// The kernel entry `key`'s sources call for; None when it has none.
    fn kernel_entry(&self, key: &(List, Prefix)) -> Option<ListEntry> {
        let s = self.entries.get(key)?;
        entry_for(key.0, s, self.cfg.config.blocklist.dry_run)
    }

    /// Makes the kernel entry for `key` match its sources.
    fn sync(&mut self, key: (List, Prefix)) -> Result<(), CoreError> {
        match self.kernel_entry(&key) {
            Some(entry) => self.dp.list_insert(key.0, &key.1, entry)?,
            None => {
                self.dp.list_remove(key.0, &key.1)?;
                self.entries.remove(&key);
            }
        }
        Ok(())
    }

    /// Adds runtime entries. All are checked first; one refusal changes nothing.
    pub fn add(
        &mut self,
        kind: List,
        prefixes: &[Prefix],
        ttl: Option<Duration>,
        reason: Option<String>,
        origin: &str,
        force: bool,
    ) -> Result<(), CoreError> {
        check_runtime_entry(ttl, reason.as_deref())?;
        if kind == List::Allow && !force {
            let g = &self.cfg.config.guards;
            let broad = g.too_broad(prefixes);
            if !broad.is_empty() {
                let shown: Vec<String> = broad.iter().take(10).map(ToString::to_string).collect();
                return Err(CoreError::Invalid(format!(
                    "refusing to allowlist {}: an allowlisted source skips every other check, and \
                     entries shorter than /{} (IPv4) or /{} (IPv6) need --force ([guards] in the config)",
                    shown.join(", "),
                    g.min_prefix_v4,
                    g.min_prefix_v6
                )));
            }
        }
        let expires = ttl.map(|t| clock::unix_now() + t.as_secs().max(1));
        let reason: Option<Arc<str>> = reason.map(Arc::from);
        let items: Vec<_> = prefixes
            .iter()
            .map(|p| (*p, expires, reason.clone()))
            .collect();
        self.add_each(kind, items, origin)
    }

    /// Adds runtime entries, each with its own expiry (Unix seconds) and
    /// reason. All are checked first; one refusal changes nothing.
    pub fn add_each(
        &mut self,
        kind: List,
        mut items: Vec<NewEntry>,
        origin: &str,
    ) -> Result<(), CoreError> {
        let prefixes: Vec<Prefix> = items.iter().map(|(p, _, _)| *p).collect();
        let prefixes = &prefixes[..];
        if kind == List::Block {
            let hits: Vec<String> = prefixes
                .iter()
                .filter_map(|p| {
                    self.protected_hit(p)
                        .map(|r| format!("{p} (protected range {r})"))
                })
                .collect();
            if !hits.is_empty() {
                self.refused_total += hits.len() as u64;
                return Err(CoreError::Refused(format!(
                    "refusing to block protected addresses: {}. Protected ranges are the host's own addresses and [protected] ranges in the config; they can never be blocked or banned",
                    hits.join(", ")
                )));
            }
        }
        self.room_for(kind, prefixes).map_err(|full| {
            CoreError::Refused(format!(
                "{full}; nothing was added (raise [capacity] and restart, or remove entries)"
            ))
        })?;
        let now = clock::unix_now();
        let origin: Arc<str> = Arc::from(origin);
        // In key order: the registry's inserts then walk the tree in step
        // instead of missing the cache on each (a million-entry import
        // spends half the time here). Stable, so a repeated prefix still
        // ends with its last entry.
        items.sort_by_key(|(p, _, _)| p.order_key());
        let mut batch = Vec::with_capacity(items.len());
        for (p, expires, reason) in items {
            let (_, entry) = self.set_runtime(
                (kind, p),
                Some(RuntimeEntry {
                    origin: origin.clone(),
                    deadline_ns: expires.map(clock::mono_deadline),
                    reason,
                    added: now,
                }),
            );
            if let Some(entry) = entry {
                batch.push((p, entry));
            }
        }
        // One batch: a million entries in a few syscalls.
        self.dp.list_insert_many(kind, &batch)?;
        self.dirty = true;
        Ok(())
    }

    /// Removes runtime entries. Entries that only the config holds are
    /// refused: the next reload would bring them back.
    pub fn remove(&mut self, kind: List, prefixes: &[Prefix]) -> Result<usize, CoreError> {
        let mut problems = Vec::new();
        for p in prefixes {
            match self.entries.get(&(kind, *p)) {
                None => problems.push(format!("{p} is not on the list")),
                Some(s) if s.runtime.is_none() && !s.config && !s.protected => {
                    problems.push(format!(
                        "{p} comes from feed {}; it follows the feed (remove it at the source, or allowlist it)",
                        self.feed_names(s.feeds).join(", ")
                    ));
                }
                Some(s) if s.runtime.is_none() => problems.push(format!(
                    "{p} comes from the config file ({}); remove it there and reload",
                    if s.protected {
                        "protected ranges"
                    } else {
                        "lists"
                    }
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(CoreError::Refused(problems.join("; ")));
        }
        for p in prefixes {
            self.set_runtime((kind, *p), None);
            self.sync((kind, *p))?;
        }
        self.dirty = true;
        Ok(prefixes.len())
    }

    /// Whether `kind` has room for those of `prefixes` it does not hold yet.
    fn room_for(&self, kind: List, prefixes: &[Prefix]) -> Result<(), ListFull> {
        let new = prefixes
            .iter()
            .filter(|p| !self.entries.contains_key(&(kind, **p)));
        self.dp
            .capacities()
            .check_room(kind, self.dp.list_len(kind).into(), PerFamily::count(new))
    }

    /// Removes the runtime entries among `prefixes` that `origin` added;
    /// others are left alone. Returns how many were removed.
    pub fn remove_from(
        &mut self,
        kind: List,
        prefixes: &[Prefix],
        origin: &str,
    ) -> Result<usize, CoreError> {
        let mut n = 0;
        for p in prefixes {
            let key = (kind, *p);
            let ours = self
                .entries
                .get(&key)
                .and_then(|s| s.runtime.as_ref())
                .is_some_and(|r| &*r.origin == origin);
            if ours {
                self.set_runtime(key, None);
                self.sync(key)?;
                n += 1;
            }
        }
        self.dirty |= n > 0;
        Ok(n)
    }

    /// Runtime entries added by `origin`.
    pub fn runtime_of(&self, kind: List, origin: &str) -> Vec<Prefix> {
        self.entries
            .iter()
            .filter(|((k, _), s)| {
                *k == kind && s.runtime.as_ref().is_some_and(|r| &*r.origin == origin)
            })
            .map(|((_, p), _)| *p)
            .collect()
    }

    fn feed_names(&self, bits: u64) -> Vec<String> {
        self.feed_slots
            .iter()
            .filter(|(_, slot)| bits & (1 << **slot) != 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn rows(&self, kind: List, matching: Option<std::net::IpAddr>) -> Vec<EntryRow> {
        self.entries
            .iter()
            .filter(|((k, p), _)| *k == kind && matching.is_none_or(|ip| p.contains(ip)))
            .map(|((_, p), s)| {
                let mut origin = Vec::new();
                if s.config {
                    origin.push("config".to_string());
                }
                if s.protected {
                    origin.push("protected".to_string());
                }
                for name in self.feed_names(s.feeds) {
                    origin.push(format!("feed:{name}"));
                }
                let mut expires = None;
                let mut reason = None;
                if let Some(r) = &s.runtime {
                    origin.push(r.origin.to_string());
                    if !s.permanent() {
                        expires = r.expires();
                    }
                    reason = r.reason.as_deref().map(str::to_string);
                }
                EntryRow {
                    prefix: *p,
                    origin,
                    expires,
                    reason,
                }
            })
            .collect()
    }

    pub fn bans(&self) -> Result<Vec<BanRow>, CoreError> {
        let now = clock::mono_ns();
        Ok(self
            .dp
            .bans()?
            .into_iter()
            .map(|(p, b)| BanRow {
                prefix: p,
                expires: clock::unix_of_mono(b.expires_ns),
                offences: b.offences,
                policy: self.policy_name(b.policy as usize),
                active: b.expires_ns > now,
            })
            .collect())
    }

    /// A policy's name by its index in the program's array.
    pub fn policy_name(&self, index: usize) -> String {
        self.policy_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }

    /// Lifts bans (the offence history goes with them).
    pub fn unban(&mut self, prefixes: &[Prefix]) -> Result<usize, CoreError> {
        let mut n = 0;
        for p in prefixes {
            if self.dp.ban_remove(p)? {
                n += 1;
            }
        }
        self.dirty |= n > 0;
        Ok(n)
    }

    pub fn unban_all(&mut self) -> Result<usize, CoreError> {
        let all: Vec<Prefix> = self.dp.bans()?.into_iter().map(|(p, _)| p).collect();
        self.unban(&all)
    }

    /// Removes expired runtime entries and long-expired ban records.
    /// Returns how many were removed.
    pub fn sweep(&mut self) -> Result<usize, CoreError> {
        // The expiry index, not the registry: a second's sweep of a million
        // entries costs what expires, not what is listed.
        let now = clock::mono_ns();
        let expired: Vec<(List, Prefix)> = self
            .expiring
            .iter()
            .take_while(|(d, _, _)| *d <= now)
            .map(|(_, k, p)| (*k, *p))
            .collect();
        for key in &expired {
            self.set_runtime(*key, None);
            self.sync(*key)?;
        }
        // A ban's record is kept past its end to recognise repeat offenders,
        // for as long as the policy's longest ban.
        let mono = clock::mono_ns();
        let policies = self.dp.policies()?;
        let mut forgotten = 0;
        for (p, b) in self.dp.bans()? {
            let memory = policies
                .get(b.policy as usize)
                .map_or(3_600_000_000_000, |pol| pol.ban_max_ns);
            if b.expires_ns.saturating_add(memory) < mono && self.dp.ban_remove(&p)? {
                forgotten += 1;
            }
        }
        let n = expired.len() + forgotten;
        self.dirty |= n > 0;
        Ok(n)
    }

    /// Appends runtime entries after the key `after` to `out` as JSON
    /// objects (comma-separated; `first` says whether one was written yet),
    /// visiting at most `max` registry entries. Returns the last key
    /// visited, or None at the end. The caller holds the lock only for one
    /// piece, so saving a million entries never stalls the control plane.
    pub fn write_runtime(
        &self,
        after: Option<(List, Prefix)>,
        max: usize,
        out: &mut Vec<u8>,
        first: &mut bool,
    ) -> serde_json::Result<Option<(List, Prefix)>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let range = match after {
            Some(k) => self.entries.range((Excluded(k), Unbounded)),
            None => self.entries.range(..),
        };
        let mut last = None;
        for (n, ((kind, p), src)) in range.enumerate() {
            if n == max {
                return Ok(last);
            }
            last = Some((*kind, *p));
            let Some(r) = &src.runtime else { continue };
            if !std::mem::take(first) {
                out.push(b',');
            }
            serde_json::to_writer(
                &mut *out,
                &SavedEntryRef {
                    list: *kind,
                    prefix: *p,
                    origin: &r.origin,
                    expires: r.expires(),
                    reason: r.reason.as_deref(),
                    added: r.added,
                },
            )?;
        }
        Ok(None)
    }

    /// Bans to persist, with wall-clock expiries.
    pub fn saved_bans(&self) -> Result<Vec<SavedBan>, CoreError> {
        Ok(self
            .dp
            .bans()?
            .into_iter()
            .map(|(p, b)| SavedBan {
                prefix: p,
                expires: clock::unix_of_mono(b.expires_ns),
                offences: b.offences,
                policy: b.policy,
            })
            .collect())
    }

    /// Restores runtime entries and bans from the state file. Entries that
    /// are expired or now protected are skipped and reported.
    pub fn restore(&mut self, state: &State) -> Result<Vec<String>, CoreError> {
        let mut notes = Vec::new();
        let now = clock::unix_now();
        for e in &state.entries {
            if e.expires.is_some_and(|x| x <= now) {
                continue;
            }
            if e.list == List::Block {
                if let Some(r) = self.protected_hit(&e.prefix) {
                    notes.push(format!(
                        "not restoring block of {} (protected range {r})",
                        e.prefix
                    ));
                    continue;
                }
            }
            self.set_runtime(
                (e.list, e.prefix),
                Some(RuntimeEntry {
                    origin: Arc::from(e.origin.as_str()),
                    deadline_ns: e.expires.map(clock::mono_deadline),
                    reason: e.reason.as_deref().map(Arc::from),
                    added: e.added,
                }),
            );
            self.sync((e.list, e.prefix))?;
        }
        let live: Vec<Prefix> = self.dp.bans()?.into_iter().map(|(p, _)| p).collect();
        for b in &state.bans {
            if live.contains(&b.prefix) || self.protected_hit(&b.prefix).is_some() {
                continue;
            }
            self.dp.ban_set(
                &b.prefix,
                BanEntry {
                    expires_ns: clock::mono_deadline(b.expires),
                    offences: b.offences,
                    policy: b.policy,
                },
            )?;
        }
        Ok(notes)
    }

    /// Drops kernel list entries that no source claims (left in re-adopted
    /// maps by an earlier run and absent from the state file).
    pub fn forget_unclaimed(&mut self) -> Result<usize, CoreError> {
        let mut n = 0;
        for list in [List::Allow, List::Block] {
            for (p, _) in self.dp.list_entries(list)? {
                if !self.entries.contains_key(&(list, p)) {
                    self.dp.list_remove(list, &p)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Counts of list entries by list, family and origin, as of the last
    /// `count_entries` (housekeeping refreshes it every ten seconds, so a
    /// scrape never walks a million entries under the lock).
    pub fn entry_counts(&self) -> &BTreeMap<(List, &'static str, Origin), u64> {
        &self.entry_counts
    }

    /// Recounts list entries by list, family and origin, and the sources
    /// holding a rate-table slot: too slow for every scrape, so housekeeping
    /// refreshes them.
    pub fn refresh_slow_counts(&mut self) {
        if let Ok(used) = self.dp.rate_table_occupancy() {
            self.rate_slots_used = used;
        }
        self.verified_sources = self.dp.verified_count(clock::mono_ns()) as u64;
        self.count_entries();
    }

    fn count_entries(&mut self) {
        self.entry_counts = self.tally_entries();
    }

    fn tally_entries(&self) -> BTreeMap<(List, &'static str, Origin), u64> {
        let mut out = BTreeMap::new();
        for ((kind, p), s) in &self.entries {
            let fam = if p.is_ipv4() { "ipv4" } else { "ipv6" };
            if let Some(origin) = s.origin() {
                *out.entry((*kind, fam, origin)).or_insert(0) += 1;
            }
        }
        out
    }
}
