//! The control API's request and response bodies (JSON over HTTP/1.1 on the
//! Unix socket), shared by the server and the CLI. Paths are versioned: /v1/.
use serde::{Deserialize, Serialize};

use crate::{
    attach::IfaceStatus,
    core::{BanRow, EntryRow, ReloadStatus},
    prefix::Prefix,
};

#[derive(Debug, Serialize, Deserialize)]
pub struct AddRequest {
    pub prefixes: Vec<Prefix>,
    /// Seconds; None never expires.
    pub ttl_secs: Option<u64>,
    pub reason: Option<String>,
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
    /// Human-readable steps: which entry, ban or policy decided, and why.
    pub because: Vec<String>,
}

/// `rampart feeds list`: every configured feed and the CrowdSec bouncer.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedsView {
    pub feeds: Vec<crate::feeds::FeedStatus>,
    pub crowdsec: Option<crate::crowdsec::CrowdsecStatus>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// None: every feed.
    pub name: Option<String>,
}

pub type Entries = Vec<EntryRow>;
pub type Bans = Vec<BanRow>;
