//! The audit log: one JSON line per change requested over the control
//! socket, with who asked (peer uid and pid from SO_PEERCRED) and the result.
//! Append-only; a failure to write is logged and counted, never fatal.
//! Past `AUDIT_MAX_BYTES` the log moves to `audit.log.1` (replacing the one
//! before) and a new one starts: two files at most, whatever the traffic.
use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub const AUDIT_FILE: &str = "audit.log";
/// The size at which the log rotates.
pub const AUDIT_MAX_BYTES: u64 = 64 << 20;

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
    max_bytes: u64,
}

impl Audit {
    pub fn new(state_dir: &Path) -> Self {
        Self::with_limit(state_dir, AUDIT_MAX_BYTES)
    }

    fn with_limit(state_dir: &Path, max_bytes: u64) -> Self {
        Self {
            path: state_dir.join(AUDIT_FILE),
            max_bytes,
        }
    }

    /// Moves a full log aside (one old file is kept).
    fn rotate_if_full(&self) -> std::io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() >= self.max_bytes => {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                std::fs::rename(&self.path, old)
            }
            _ => Ok(()),
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
            crate::persist::private_dir(dir)?;
        }
        self.rotate_if_full()?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }
}

/// The current UTC time as RFC 3339 (seconds).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_rotates_and_at_most_two_files_remain() {
        let dir = std::env::temp_dir().join(format!("rampart-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Audit::with_limit(&dir, 1000);
        let args = serde_json::json!({"prefixes": ["192.0.2.1"]});
        for _ in 0..100 {
            a.record(Some(0), Some(1), "block.add", &args, "ok")
                .unwrap();
        }
        let size = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        assert!(size(AUDIT_FILE) > 0 && size(AUDIT_FILE) < 1200);
        assert!(size("audit.log.1") >= 1000 && size("audit.log.1") < 1200);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(AUDIT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private: {mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
