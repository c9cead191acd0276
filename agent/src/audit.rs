//! The audit log: one JSON line per change requested over the control
//! socket, with who asked (peer uid and pid from SO_PEERCRED) and the result.
//! Append-only; a failure to write is logged and counted, never fatal.
use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub const AUDIT_FILE: &str = "audit.log";

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    uid: Option<u32>,
    pid: Option<i32>,
    action: &'a str,
    args: &'a serde_json::Value,
    result: &'a str,
}

pub struct Audit {
    path: PathBuf,
}

impl Audit {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(AUDIT_FILE),
        }
    }

    pub fn record(
        &self,
        uid: Option<u32>,
        pid: Option<i32>,
        action: &str,
        args: &serde_json::Value,
        result: &str,
    ) -> std::io::Result<()> {
        let line = Line {
            time: rfc3339_now(),
            uid,
            pid,
            action,
            args,
            result,
        };
        let mut text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
        text.push('\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }
}

/// The current UTC time as RFC 3339 (seconds).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
