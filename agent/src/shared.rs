//! What the agent's tasks and handlers share: the state behind its locks,
//! and the state of the feed runner and the CrowdSec bouncer. The daemon
//! builds it; the control API, feeds, CrowdSec and the sweeper act on it.
//! The runners' logic lives in their own modules (`impl Feeds` in
//! `feeds.rs`, `impl Bouncer` in `crowdsec.rs`), which import this one.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use crate::{
    api::{CrowdsecStatus, FeedStatus, IfaceStatus},
    audit::Audit,
    feed::FeedSpec,
    metrics::Metrics,
    state::Core,
    top::Top,
};

/// Everything the tasks and handlers share. Lock order: `core` first; no
/// other of these locks is held while `core` is taken.
pub struct Shared {
    pub core: Mutex<Core>,
    pub ifaces: Mutex<Vec<IfaceStatus>>,
    pub slots: Mutex<Vec<(u32, String)>>,
    pub top: Mutex<Top>,
    pub metrics: Metrics,
    pub audit: Audit,
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub state_error: Mutex<Option<String>>,
    pub(crate) config_hash: Mutex<u64>,
    pub feeds: Feeds,
    pub crowdsec: Bouncer,
    /// Held for a whole save: one writer of the state file at a time.
    pub(crate) saving: Mutex<()>,
    /// Wakes the saver after a change, so it reaches the state file at once.
    pub save_soon: tokio::sync::Notify,
}

/// Locks a mutex, recovering from poisoning: a panicked holder must not take
/// the agent's control plane down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The feed runner's shared state.
pub struct Feeds {
    pub book: Mutex<BTreeMap<String, FeedStatus>>,
    /// The spec each feed was last refreshed with (a change refreshes now).
    pub(crate) applied: Mutex<BTreeMap<String, FeedSpec>>,
    /// One refresh at a time: scheduled and requested ones queue here.
    pub(crate) busy: tokio::sync::Mutex<()>,
    pub(crate) client: reqwest::Client,
    pub(crate) cache_dir: PathBuf,
}

/// The CrowdSec bouncer's state (its loop is in `crowdsec.rs`).
pub struct Bouncer {
    pub status: Mutex<Option<CrowdsecStatus>>,
    pub(crate) client: reqwest::Client,
}

impl Default for Bouncer {
    fn default() -> Self {
        Self {
            status: Mutex::new(None),
            // The API key goes in a header: no redirect may carry it to
            // another host, and no proxy from the environment sees it.
            client: reqwest::Client::builder()
                .user_agent(concat!("rampart-bouncer/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }
}

/// Changes at least this large hand their freed memory back afterwards.
pub const BULK_CHANGE: usize = 10_000;

/// Hands memory freed by a bulk change (request bodies, staging vectors,
/// parsed feeds) back to the system. The allocator otherwise keeps it for
/// reuse, and the agent's resident memory would show the peak of the last
/// import rather than what it holds.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns the allocator's own free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
