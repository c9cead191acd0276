//! Keeping configured feeds fresh: fetch on schedule (or on request),
//! parse, swap into the lists, and keep the last good version on any
//! failure. Each good version is cached in the state directory, so a
//! restart re-applies it before the source answers again.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rampart_common::decide::List;

pub use crate::{api::FeedStatus, shared::Feeds};
use crate::{
    clock,
    feed::{self, FeedSpec},
    prefix::Prefix,
    shared::{BULK_CHANGE, Shared, lock, release_freed_memory},
    state::{Core, FeedApplied},
};

impl Feeds {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            book: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
            client: reqwest::Client::builder()
                .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
                .redirect(same_origin_redirects())
                .build()
                .unwrap_or_default(),
            cache_dir: state_dir.join("feeds"),
        }
    }

    fn cache_path(&self, name: &str) -> PathBuf {
        self.cache_dir.join(format!("{name}.txt"))
    }

    pub fn statuses(&self) -> Vec<FeedStatus> {
        lock(&self.book).values().cloned().collect()
    }

    /// At start-up, before unclaimed pinned entries are forgotten: applies
    /// each feed's cached last good version, so a restart keeps the feed in
    /// force while its source is fetched again.
    pub fn restore_cached(&self, core: &mut Core, specs: &[FeedSpec]) {
        let mut adopted: BTreeMap<List, HashSet<Prefix>> = BTreeMap::new();
        for spec in specs {
            let Ok(text) = std::fs::read_to_string(self.cache_path(&spec.name)) else {
                continue;
            };
            let kind = spec.action;
            let parsed = match feed::parse(spec.format, &text, spec.skip_invalid)
                .and_then(|p| screen_breadth(spec, &core.cfg.config.guards, p))
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(feed = %spec.name, "ignoring the cached version: {e}");
                    continue;
                }
            };
            if let std::collections::btree_map::Entry::Vacant(v) = adopted.entry(kind) {
                let keys = core
                    .dp
                    .list_entries(kind)
                    .map(|v| v.into_iter().map(|(p, _)| p).collect())
                    .unwrap_or_default();
                v.insert(keys);
            }
            // The cached version passed the change check when it came in.
            match core.replace_feed(&spec.name, kind, &parsed.prefixes, adopted.get(&kind), None) {
                Ok(applied) => {
                    tracing::info!(feed = %spec.name, entries = applied.entries, "feed restored from its cached version");
                    let mut book = lock(&self.book);
                    let st = book.entry(spec.name.clone()).or_default();
                    describe(st, spec);
                    record_applied(st, &applied, parsed.invalid);
                    st.last_success = mtime(&self.cache_path(&spec.name));
                }
                Err(e) => {
                    tracing::warn!(feed = %spec.name, "cannot restore the cached version: {e}")
                }
            }
        }
    }

    /// Writes the cache durably: a crash right after leaves the old
    /// version or the new one, never a torn file.
    fn write_cache(&self, name: &str, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        crate::persist::private_dir(&self.cache_dir)?;
        let path = self.cache_path(name);
        let tmp = path.with_extension("txt.tmp");
        let mut f = crate::persist::create_private(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.cache_dir)?.sync_all()
    }
}

/// Redirects are followed only within the source's own scheme, host and
/// port, five at most: a feed server must not send the agent to another
/// host (a link-local metadata address, say) or down to plain HTTP.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        let same = first.as_ref().is_some_and(|f| {
            f.scheme() == attempt.url().scheme()
                && f.host_str() == attempt.url().host_str()
                && f.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if same {
            attempt.follow()
        } else {
            let to = feed::excerpt(attempt.url().as_str());
            attempt.error(format!(
                "redirected to another host or scheme ({to}); only redirects within the source's own host are followed"
            ))
        }
    })
}

/// Entries broader than `[guards]` would block (or pass) a large part of
/// the Internet: they refuse the version, or are skipped with
/// `skip_invalid` (counted as invalid).
fn screen_breadth(
    spec: &FeedSpec,
    guards: &crate::config::GuardsSection,
    mut parsed: feed::ParsedFeed,
) -> Result<feed::ParsedFeed, String> {
    let broad: Vec<Prefix> = guards
        .too_broad(&parsed.prefixes)
        .into_iter()
        .copied()
        .collect();
    if broad.is_empty() {
        return Ok(parsed);
    }
    if spec.skip_invalid && broad.len() < parsed.prefixes.len() {
        parsed.prefixes.retain(|p| !broad.contains(p));
        parsed.invalid += broad.len() as u64;
        return Ok(parsed);
    }
    let examples: Vec<String> = broad.iter().take(3).map(ToString::to_string).collect();
    Err(format!(
        "{} entries broader than /{} (IPv4) or /{} (IPv6), e.g. {}: refused, they would {} a large part of the Internet ([guards] min_prefix_v4/v6 set the limit; skip_invalid = true loads the rest)",
        broad.len(),
        guards.min_prefix_v4,
        guards.min_prefix_v6,
        examples.join(", "),
        if spec.action == List::Block {
            "block"
        } else {
            "pass"
        }
    ))
}

fn mtime(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

impl FeedStatus {
    /// A configured feed not tried yet.
    pub fn untried(spec: &FeedSpec) -> Self {
        let mut st = Self::default();
        describe(&mut st, spec);
        st
    }
}

fn describe(st: &mut FeedStatus, spec: &FeedSpec) {
    st.name.clone_from(&spec.name);
    st.source.clone_from(&spec.source);
    st.action = spec.action.name().into();
}

fn record_applied(st: &mut FeedStatus, a: &FeedApplied, invalid: u64) {
    st.entries = a.entries;
    st.skipped_protected = a.skipped_protected;
    st.skipped_allowlisted = a.skipped_allowlisted;
    st.skipped_invalid = invalid;
}

/// Fetches, parses and applies one feed now. On any failure the feed's
/// entries stay as they were and the error is recorded.
pub async fn refresh(shared: &Arc<Shared>, spec: &FeedSpec) -> FeedStatus {
    let feeds = &shared.feeds;
    let _turn = feeds.busy.lock().await;
    let started = clock::unix_now();
    let result = fetch_and_apply(shared, spec).await;
    let mut book = lock(&feeds.book);
    let st = book.entry(spec.name.clone()).or_default();
    describe(st, spec);
    st.last_attempt = started;
    match result {
        Ok((applied, invalid)) => {
            record_applied(st, &applied, invalid);
            st.last_success = clock::unix_now();
            st.last_error = None;
            st.refreshes_ok += 1;
            shared.metrics.feed_refreshed(&spec.name, true);
            tracing::info!(feed = %spec.name, entries = applied.entries, added = applied.added,
                removed = applied.removed, skipped_protected = applied.skipped_protected,
                skipped_allowlisted = applied.skipped_allowlisted, "feed refreshed");
        }
        Err(e) => {
            st.last_error = Some(e.clone());
            st.refreshes_failed += 1;
            shared.metrics.feed_refreshed(&spec.name, false);
            tracing::error!(feed = %spec.name, "feed refresh failed, keeping the last good version: {e}");
        }
    }
    lock(&feeds.applied).insert(spec.name.clone(), spec.clone());
    st.clone()
}

async fn fetch_and_apply(
    shared: &Arc<Shared>,
    spec: &FeedSpec,
) -> Result<(FeedApplied, u64), String> {
    let text = feed::fetch(spec, &shared.feeds.client).await?;
    let shared2 = shared.clone();
    let spec2 = spec.clone();
    tokio::task::spawn_blocking(move || {
        let parsed = feed::parse(spec2.format, &text, spec2.skip_invalid)?;
        let kind = spec2.action;
        let applied = {
            let mut core = lock(&shared2.core);
            let parsed = screen_breadth(&spec2, &core.cfg.config.guards, parsed)?;
            // A feed that changed action leaves its old list first.
            let other = match kind {
                List::Block => List::Allow,
                List::Allow => List::Block,
            };
            core.replace_feed(&spec2.name, other, &[], None, None)
                .map_err(|e| e.to_string())?;
            let applied = core
                .replace_feed(
                    &spec2.name,
                    kind,
                    &parsed.prefixes,
                    None,
                    Some(spec2.max_change_percent),
                )
                .map_err(|e| e.to_string())?;
            (applied, parsed)
        };
        let (applied, parsed) = applied;
        if let Err(e) = shared2.feeds.write_cache(&spec2.name, &text) {
            tracing::warn!(feed = %spec2.name, "cannot cache the feed (a restart will wait for the source): {e}");
        }
        let invalid = parsed.invalid;
        if parsed.prefixes.len() >= BULK_CHANGE {
            drop((parsed, text));
            release_freed_memory();
        }
        Ok((applied, invalid))
    })
    .await
    .map_err(|_| "the refresh task failed".to_string())?
}

/// The configured feeds.
pub fn configured(shared: &Shared) -> Vec<FeedSpec> {
    lock(&shared.core)
        .cfg
        .config
        .feeds
        .iter()
        .map(|f| f.get_ref().clone())
        .collect()
}

/// Removes feeds that left the config: their entries go, atomically.
fn retire_unconfigured(shared: &Shared, specs: &[FeedSpec]) {
    let names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let known = lock(&shared.core).feed_names_known();
    for name in known.iter().filter(|n| !names.contains(n.as_str())) {
        match lock(&shared.core).drop_feed(name) {
            Ok(n) => {
                tracing::info!(feed = %name, removed = n, "feed removed from the config; its entries are gone")
            }
            Err(e) => tracing::error!(feed = %name, "cannot remove the feed's entries: {e}"),
        }
        let _ = std::fs::remove_file(shared.feeds.cache_path(name));
        lock(&shared.feeds.book).remove(name);
        lock(&shared.feeds.applied).remove(name);
        shared.metrics.forget_feed(name);
    }
    lock(&shared.feeds.book).retain(|n, _| names.contains(n.as_str()));
}

/// Whether a feed should be fetched now: never tried, changed in the
/// config, or its interval (a minute after a failure) has passed.
fn due(shared: &Shared, spec: &FeedSpec, now: u64) -> bool {
    if lock(&shared.feeds.applied).get(&spec.name) != Some(spec) {
        return true;
    }
    let book = lock(&shared.feeds.book);
    let Some(st) = book.get(&spec.name) else {
        return true;
    };
    let wait = if st.last_error.is_some() {
        spec.refresh.min(Duration::from_secs(60))
    } else {
        spec.refresh
    };
    now >= st.last_attempt + wait.as_secs()
}

/// The scheduler: checks every second which feeds are due.
pub async fn run(shared: Arc<Shared>) {
    loop {
        let specs = configured(&shared);
        let s2 = shared.clone();
        let specs2 = specs.clone();
        let _ = tokio::task::spawn_blocking(move || retire_unconfigured(&s2, &specs2)).await;
        for spec in &specs {
            if due(&shared, spec, clock::unix_now()) {
                refresh(&shared, spec).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
