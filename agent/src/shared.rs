//! What the agent's tasks and handlers share: the state behind its locks,
//! and the state of the feed runner and the CrowdSec bouncer. The daemon
//! builds it; the control API, feeds, CrowdSec and the sweeper act on it.
//! The runners' logic lives in their own modules (`impl Feeds` in
//! `feeds.rs`, `impl Bouncer` in `crowdsec.rs`), which import this one.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
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
    pub share: Sharing,
    /// Held for a whole save: one writer of the state file at a time.
    pub(crate) saving: Mutex<()>,
    /// Wakes the saver after a change, so it reaches the state file at once.
    pub save_soon: tokio::sync::Notify,
    pub health: Health,
    /// Auto mode's interfaces, kept through route flaps.
    pub routes: Mutex<crate::auto_ifaces::RouteMemory>,
    /// The traffic detector (taken after `core`, never before).
    pub detection: Mutex<crate::detection::Detection>,
}

/// Housekeeping this long overdue means a wedged agent: /healthz fails.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(15);

/// What the health endpoints read without taking any state lock: the last
/// housekeeping pass (which takes the core lock and reads the maps) and
/// whether its map read answered.
pub struct Health {
    beat_ns: AtomicU64,
    maps_ok: AtomicBool,
}

impl Health {
    pub fn new(now_ns: u64) -> Self {
        Self {
            beat_ns: AtomicU64::new(now_ns),
            maps_ok: AtomicBool::new(true),
        }
    }

    /// Housekeeping ran at `now_ns`, and the maps answered or not.
    pub fn beat(&self, now_ns: u64, maps_ok: bool) {
        self.beat_ns.store(now_ns, Ordering::Relaxed);
        self.maps_ok.store(maps_ok, Ordering::Relaxed);
    }

    pub fn maps_ok(&self) -> bool {
        self.maps_ok.load(Ordering::Relaxed)
    }

    /// How long housekeeping has been overdue, if past `HEARTBEAT_STALE`.
    pub fn stalled(&self, now_ns: u64) -> Option<Duration> {
        let since =
            Duration::from_nanos(now_ns.saturating_sub(self.beat_ns.load(Ordering::Relaxed)));
        (since > HEARTBEAT_STALE).then_some(since)
    }
}

pub use crate::sync::lock;

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
    /// The live decisions behind each of the bouncer's entries.
    pub(crate) book: Mutex<crate::crowdsec_book::DecisionBook>,
    pub(crate) clients: crate::lapi_client::ClientCache,
}

impl Default for Bouncer {
    fn default() -> Self {
        Self {
            status: Mutex::new(None),
            book: Mutex::default(),
            // The API key goes in a header: no redirect may carry it to
            // another host, and no proxy from the environment sees it.
            clients: crate::lapi_client::ClientCache::new(concat!(
                "rampart-bouncer/",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }
}

/// What this node shares with the local API (its loop is in
/// `crowdsec_push.rs`).
pub struct Sharing {
    pub(crate) clients: crate::lapi_client::ClientCache,
    pub(crate) queue: Mutex<crate::share_queue::ShareQueue>,
    pub status: Mutex<crate::api::ShareStatus>,
    /// New work for the pusher.
    pub wake: tokio::sync::Notify,
}

impl Default for Sharing {
    fn default() -> Self {
        Self {
            clients: crate::lapi_client::ClientCache::new(concat!(
                "rampart-share/",
                env!("CARGO_PKG_VERSION")
            )),
            queue: Mutex::default(),
            status: Mutex::default(),
            wake: tokio::sync::Notify::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn health_fails_only_once_housekeeping_is_overdue() {
        let h = Health::new(100 * S);
        assert_eq!(h.stalled(110 * S), None);
        assert_eq!(h.stalled(115 * S), None, "at the limit, still healthy");
        assert_eq!(h.stalled(130 * S), Some(Duration::from_secs(30)));
        h.beat(129 * S, false);
        assert_eq!(h.stalled(130 * S), None, "a beat makes it healthy again");
        assert!(!h.maps_ok());
        assert_eq!(
            h.stalled(50 * S),
            None,
            "a clock behind the beat is not a stall"
        );
    }
}
