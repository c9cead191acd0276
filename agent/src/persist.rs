//! The state file: runtime blocks and allows (from the CLI and feeds) and
//! live bans, with absolute wall-clock expiries, so they survive restarts,
//! re-pinning and reboots. Written atomically (temp file, fsync, rename); a
//! corrupt file is moved aside and reported, never fatal.
use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use rampart_common::decide::List;
use serde::{Deserialize, Serialize};

use crate::prefix::Prefix;

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    pub entries: Vec<SavedEntry>,
    pub bans: Vec<SavedBan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedEntry {
    pub list: List,
    pub prefix: Prefix,
    /// "cli" or "feed:NAME".
    pub origin: String,
    /// Unix seconds; None never expires.
    pub expires: Option<u64>,
    pub reason: Option<String>,
    pub added: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedBan {
    pub prefix: Prefix,
    /// Unix seconds.
    pub expires: u64,
    pub offences: u32,
    pub policy: u32,
}

/// Reads the state; a missing file is empty state, a corrupt one is moved
/// aside (its new name is returned in the error text) and read as empty.
pub fn load(dir: &Path) -> (State, Option<String>) {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (State::default(), None),
        Err(e) => {
            return (
                State::default(),
                Some(format!("cannot read {}: {e}", path.display())),
            );
        }
    };
    match serde_json::from_str::<State>(&text) {
        Ok(s) if s.version == STATE_VERSION => (s, None),
        Ok(s) => (
            State::default(),
            Some(set_aside(
                &path,
                &format!("unknown state version {}", s.version),
            )),
        ),
        Err(e) => (State::default(), Some(set_aside(&path, &e.to_string()))),
    }
}

fn set_aside(path: &Path, why: &str) -> String {
    let aside = PathBuf::from(format!(
        "{}.corrupt-{}",
        path.display(),
        crate::clock::unix_now()
    ));
    match fs::rename(path, &aside) {
        Ok(()) => format!(
            "state file {} is unreadable ({why}); moved it to {} and started without it",
            path.display(),
            aside.display()
        ),
        Err(e) => format!(
            "state file {} is unreadable ({why}) and could not be moved: {e}",
            path.display()
        ),
    }
}

/// Creates (or empties) a file only its owner can read: state, audit and
/// feed files name who is blocked and who asked, whatever the umask or the
/// state directory's mode (a hostPath Kubernetes creates 0755).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Creates a directory (and its parents) and makes it private to its
/// owner (0700), as the files in it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// At start: the state directory, its subdirectories and their files made
/// private, including those an earlier version wrote world-readable.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    private_dir(dir)?;
    for e in fs::read_dir(dir)?.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            make_private(&e.path())?;
        } else if t.is_file() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Writes the state atomically (a reader, or a crash, sees the old file or
/// the new one, never a mix) from pieces: `entries` appends entry objects
/// (comma-separated) and returns false when there are no more; `bans` comes
/// last. The caller can lock its registry per piece.
pub fn save_streamed(
    dir: &Path,
    mut entries: impl FnMut(&mut Vec<u8>) -> std::io::Result<bool>,
    bans: impl FnOnce() -> std::io::Result<Vec<SavedBan>>,
) -> std::io::Result<()> {
    private_dir(dir)?;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, create_private(&tmp)?);
        write!(w, "{{\"version\":{STATE_VERSION},\"entries\":[")?;
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            buf.clear();
            let more = entries(&mut buf)?;
            w.write_all(&buf)?;
            if !more {
                break;
            }
        }
        w.write_all(b"],\"bans\":")?;
        serde_json::to_writer(&mut w, &bans()?).map_err(std::io::Error::other)?;
        w.write_all(b"}\n")?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// The version written with every state file.
pub const fn version() -> u32 {
    STATE_VERSION
}

/// Writes `bytes` to `path` atomically and privately: a temp file beside
/// it, fsync, rename, then fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_corrupt_files_aside() {
        let dir = std::env::temp_dir().join(format!("rampart-persist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = State {
            version: STATE_VERSION,
            entries: vec![SavedEntry {
                list: List::Block,
                prefix: "192.0.2.0/24".parse().unwrap(),
                origin: "cli".into(),
                expires: Some(4_000_000_000),
                reason: Some("scanner".into()),
                added: 1,
            }],
            bans: vec![],
        };
        let mut pieces = s.entries.iter();
        save_streamed(
            &dir,
            |buf| {
                if let Some(e) = pieces.next() {
                    serde_json::to_writer(&mut *buf, e).unwrap();
                }
                Ok(pieces.len() > 0)
            },
            || Ok(s.bans.clone()),
        )
        .unwrap();
        assert_eq!(load(&dir), (s, None));
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        let (s2, err) = load(&dir);
        assert_eq!(s2, State::default());
        assert!(err.unwrap().contains("moved it to"));
        assert!(!dir.join(STATE_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(500)))]
            /// A damaged state file: loaded or set aside with a reason,
            /// never a panic.
            #[test]
            fn damaged_state_files_load_or_are_set_aside(
                cut in any::<usize>(),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            ) {
                let dir = std::env::temp_dir().join(format!("rampart-persist-fuzz-{}", std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                let good = r#"{"version":1,"entries":[{"list":"block","prefix":"192.0.2.0/24","origin":"cli","expires":4000000000,"reason":"x","added":1}],"bans":[{"prefix":"198.51.100.7","expires":4000000000,"offences":2,"policy":0}]}"#;
                let mut bytes = good.as_bytes().to_vec();
                for (at, v) in flips {
                    let i = at % bytes.len();
                    bytes[i] = v;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(STATE_FILE), &bytes).unwrap();
                let (_, err) = load(&dir);
                if let Some(e) = err {
                    prop_assert!(!e.is_empty());
                }
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
}
