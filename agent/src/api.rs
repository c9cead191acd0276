//! The control API's request and response bodies (JSON over HTTP/1.1 on the
//! Unix socket), shared by the server and the CLI. Paths are versioned: /v1/.
use serde::{Deserialize, Serialize};

use crate::prefix::Prefix;

#[derive(Debug, Serialize, Deserialize)]
pub struct AddRequest {
    pub prefixes: Vec<Prefix>,
    /// Seconds; None never expires.
    pub ttl_secs: Option<u64>,
    pub reason: Option<String>,
    /// Allow an allowlist entry broader than `[guards]` permits.
    #[serde(default)]
    pub force: bool,
    /// Blocklist: share the block through the CrowdSec local API.
    #[serde(default)]
    pub share: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DelRequest {
    pub prefixes: Vec<Prefix>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BansDelRequest {
    #[serde(default)]
    pub prefixes: Vec<Prefix>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Changed {
    pub changed: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TableFill {
    pub table: String,
    pub entries: u64,
    pub capacity: u64,
}

/// Longest TTL of a runtime entry: ten years (longer: omit the TTL).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86400);
/// Longest reason kept with a runtime entry, in bytes: a million entries
/// with a long reason each would make a state file of gigabytes.
pub const MAX_REASON_BYTES: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    pub config_file: String,
    pub dry_run: bool,
    pub interfaces: Vec<IfaceStatus>,
    pub tables: Vec<TableFill>,
    pub reload: ReloadStatus,
    pub state_error: Option<String>,
    pub flood: FloodStatus,
    /// Each observed policy's traffic detector.
    #[serde(default)]
    pub detector: Vec<DetectorView>,
}

/// A policy's traffic detector: its baselines and the latest scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectorView {
    pub policy: String,
    /// Still in its learning period: nothing fires.
    pub learning: bool,
    pub learning_left_secs: u64,
    /// An anomaly is active on the policy.
    pub anomaly: bool,
    pub features: Vec<FeatureView>,
}

/// One feature: the latest value, the baseline (mean and deviation) and
/// the score (deviations above the mean).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureView {
    pub feature: String,
    pub value: f64,
    pub baseline: f64,
    pub deviation: f64,
    pub score: f64,
}

/// `rampart anomalies`: one anomaly, current or past.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnomalyRow {
    pub id: u64,
    pub policy: String,
    /// A run of the policy's ports, or none for the policy as a whole.
    pub ports: Option<String>,
    /// alert, defend, or "defend (dry-run)".
    pub action: String,
    /// Unix seconds.
    pub started: u64,
    pub ended: Option<u64>,
    pub active: bool,
    pub peak_score: f64,
    /// The features that fired it, as they were then.
    pub fired: Vec<FeatureView>,
}

/// `rampart status`: the flood defence.
#[derive(Debug, Serialize, Deserialize)]
pub struct FloodStatus {
    /// Whether SYN cookies can work on this host, and why not.
    pub syn_cookies: String,
    pub verified_sources: u64,
    pub policies: Vec<FloodPolicy>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FloodPolicy {
    pub name: String,
    /// off, on or auto.
    pub syn_cookies: String,
    /// The program answers SYNs from unverified sources now.
    pub engaged: bool,
    pub syn_above: u32,
    pub syns_last_second: u32,
    /// 0: no newcomer budget.
    pub new_sources_pps: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StatRow {
    pub interface: String,
    pub action: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TopRow {
    pub source: String,
    pub dropped: u64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Explain {
    pub ip: String,
    pub protocol: String,
    pub port: u16,
    pub action: String,
    pub reason: String,
    /// The source proved it can receive (flood defence).
    #[serde(default)]
    pub verified: bool,
    /// The policy that meters the packet, if any.
    #[serde(default)]
    pub policy: Option<String>,
    /// That policy's traffic detector.
    #[serde(default)]
    pub detector: Option<DetectorView>,
    /// Human-readable steps: which entry, ban or policy decided, and why.
    pub because: Vec<String>,
}

/// `rampart feeds list`: every configured feed and the CrowdSec bouncer.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedsView {
    pub feeds: Vec<FeedStatus>,
    pub crowdsec: Option<CrowdsecStatus>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// None: every feed.
    pub name: Option<String>,
}

pub type Entries = Vec<EntryRow>;
pub type Bans = Vec<BanRow>;

// Status rows, reported on the wire by `status`, `feeds list`, `block list`
// and `bans list`; the modules that keep each state fill them.

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: Option<u32>,
    /// native, generic, or none.
    pub mode: String,
    pub attached: bool,
    pub program_id: Option<u32>,
    pub error: Option<String>,
}

impl IfaceStatus {
    pub fn down(name: &str, error: String) -> Self {
        Self {
            name: name.into(),
            ifindex: None,
            mode: "none".into(),
            attached: false,
            program_id: None,
            error: Some(error),
        }
    }

    /// Auto mode passed over it (a default route on a non-Ethernet device);
    /// readiness does not wait for it.
    pub fn skipped(name: &str, why: String) -> Self {
        Self {
            mode: "skipped".into(),
            ..Self::down(name, why)
        }
    }
}

/// One row of `block list` / `allow list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRow {
    pub prefix: Prefix,
    /// config, protected, cli or feed:NAME (several when listed by several).
    pub origin: Vec<String>,
    /// Unix seconds; None never expires.
    pub expires: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BanRow {
    pub prefix: Prefix,
    pub expires: u64,
    pub offences: u32,
    pub policy: String,
    pub active: bool,
}

/// Result of the last reload, for `status` and metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub last_result: String,
    pub last_attempt: u64,
    pub last_success: u64,
    pub errors: Vec<String>,
    pub ok_total: u64,
    pub failed_total: u64,
}

/// The bouncer's state, for `rampart feeds list`, `status` and metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CrowdsecStatus {
    pub url: String,
    /// Decisions in force as blocklist entries.
    pub active: u64,
    pub last_success: u64,
    pub last_error: Option<String>,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub added_total: u64,
    pub deleted_total: u64,
    /// Ban decisions for protected addresses, not applied.
    pub skipped_protected_total: u64,
    /// Decisions of other types or scopes, or unreadable ones.
    pub ignored_total: u64,
    /// Decisions other Rampart nodes shared (applied or not).
    #[serde(default)]
    pub from_nodes_total: u64,
    /// This node's own shared decisions, seen in the stream and left alone.
    #[serde(default)]
    pub own_skipped_total: u64,
    /// What this node shares, while `share = true`.
    #[serde(default)]
    pub share: Option<ShareStatus>,
}

/// The pusher's state: what this node reports to the local API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareStatus {
    pub enabled: bool,
    pub url: String,
    /// The node name in the scenarios pushed (`rampart/<node>/<policy>`).
    pub node: String,
    /// Decisions waiting for the LAPI.
    pub queued: u64,
    /// Decisions pushed out of a full queue, never sent.
    pub overflowed_total: u64,
    /// Decisions the LAPI took.
    pub pushed_total: u64,
    /// HTTP requests made to the LAPI (logins included).
    pub requests_total: u64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    pub last_success: u64,
    pub last_error: Option<String>,
}

/// One feed's state, for `rampart feeds list`, `status` and metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedStatus {
    pub name: String,
    pub source: String,
    pub action: String,
    /// Entries the feed holds in the lists now.
    pub entries: u64,
    pub skipped_protected: u64,
    pub skipped_allowlisted: u64,
    pub skipped_invalid: u64,
    /// Unix seconds; 0: never.
    pub last_attempt: u64,
    pub last_success: u64,
    pub last_error: Option<String>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
}
