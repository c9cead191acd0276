//! The kernel's expiries are `CLOCK_MONOTONIC` (a wall-clock jump must not
//! change them); operators and the state file speak wall-clock time. These
//! convert between the two at the moment of the call.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn read_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds (the program reads its coarse variant,
/// which shares the same base).
pub fn mono_ns() -> u64 {
    read_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE`: exactly the clock the program reads.
pub fn mono_coarse_ns() -> u64 {
    read_ns(libc::CLOCK_MONOTONIC_COARSE)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A wall-clock expiry (unix seconds) as a monotonic deadline; 1 (already
/// past) when it has passed.
pub fn mono_deadline(expires_unix: u64) -> u64 {
    let now = unix_now();
    if expires_unix <= now {
        return 1;
    }
    mono_ns().saturating_add((expires_unix - now).saturating_mul(1_000_000_000))
}

/// A monotonic deadline as wall-clock unix seconds.
pub fn unix_of_mono(deadline_ns: u64) -> u64 {
    let now = mono_ns();
    let wall = unix_now();
    if deadline_ns <= now {
        wall.saturating_sub((now - deadline_ns) / 1_000_000_000)
    } else {
        wall + (deadline_ns - now).div_ceil(1_000_000_000)
    }
}

/// Formats a duration for people ("1h2m", "45s").
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}
