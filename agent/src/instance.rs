//! One agent per set of pins: an exclusive `flock` on the bpffs directory,
//! taken before anything reads or writes a pinned map. A second agent (say
//! `rampart agent --config other.toml` beside the service) is refused with
//! the running one's pid, having changed nothing.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use anyhow::{Context, bail};

/// Held for the agent's lifetime; the kernel drops it when the process ends,
/// however it ends.
pub struct InstanceLock {
    _dir: File,
}

impl InstanceLock {
    pub fn take(bpffs: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let dir = File::open(bpffs).with_context(|| format!("opening {}", bpffs.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Self { _dir: dir });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            bail!("locking {}: {err}", bpffs.display());
        }
        let holder = dir
            .metadata()
            .ok()
            .and_then(|m| holder_pid(&std::fs::read_to_string("/proc/locks").ok()?, m.ino()))
            .map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"));
        bail!(
            "another rampart agent ({holder}) is running on the pins under {}: stop it first \
             (systemctl stop rampart), or give this agent its own [agent] bpffs; nothing was changed",
            bpffs.display()
        )
    }
}

/// The pid holding a `flock` on inode `ino`, from `/proc/locks` lines such
/// as `1: FLOCK  ADVISORY  WRITE 1234 00:1e:5678 0 EOF`.
fn holder_pid(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let is_flock = f.get(1) == Some(&"FLOCK");
        let inode = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
        (is_flock && inode == ino).then(|| f.get(4)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_found_by_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 00:19:5678 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 00:1e:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 999 00:1e:42 0 EOF\n";
        assert_eq!(holder_pid(locks, 5678), Some(1234));
        assert_eq!(holder_pid(locks, 42), Some(999));
        assert_eq!(holder_pid(locks, 7), None);
    }
}
