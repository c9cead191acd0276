//! The Rampart agent and CLI as a library, so integration tests drive the
//! same code the binary runs.
pub mod anomaly;
pub mod api;
pub mod attach;
pub mod audit;
pub mod auto_ifaces;
pub mod bounded;
mod bpf_sys;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod crowdsec_book;
pub mod crowdsec_push;
pub mod daemon;
pub mod datapath;
pub mod detection;
pub mod detection_task;
pub mod explain;
pub mod feed;
pub mod feeds;
pub mod host;
pub mod instance;
pub mod kernel;
pub mod lapi_client;
mod list_table;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod prefix;
pub mod reload;
pub mod share_queue;
pub mod shared;
mod slash24;
pub mod state;
pub mod sync;
pub mod syncookies;
pub mod top;

/// Cases per parser property test: `default` in `cargo xtask test`,
/// `RAMPART_FUZZ_CASES` for the long runs of `cargo xtask reliability`.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("RAMPART_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
