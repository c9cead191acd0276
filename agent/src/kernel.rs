//! The running kernel's release, and the oldest one the XDP program is
//! built for, so that a verifier's refusal on an old kernel says why.

/// The oldest kernel the program can load on: packet copies for the SYN
/// cookie answer (`bpf_xdp_load_bytes`/`store_bytes`, 5.18), BPF global
/// functions with pointer arguments (5.12), the coarse clock helper (5.11),
/// XDP through bpf_link (5.9) and the ring buffer (5.8). Tested on 6.1,
/// 6.12 and 6.18.
pub const MINIMUM: (u32, u32) = (5, 18);

/// The kernels `cargo xtask test` runs the program on.
pub const TESTED: &str = "6.1, 6.12 and 6.18";

/// `uname -r`, e.g. `6.1.0-57-amd64`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The (major, minor) version at the start of a release string.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A sentence for a load failure: what this kernel is, and, when it is
/// older than [`MINIMUM`], that this is the likely reason.
pub fn load_hint(release: &str) -> String {
    let (maj, min) = MINIMUM;
    match version(release) {
        Some(v) if v < MINIMUM => format!(
            "this kernel ({release}) is older than Linux {maj}.{min}, the oldest Rampart supports (tested on {TESTED})"
        ),
        _ => format!(
            "kernel {release}; Rampart needs Linux {maj}.{min} or newer and is tested on {TESTED}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_their_version() {
        assert_eq!(version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(version("5.10.0"), Some((5, 10)));
        assert_eq!(version("garbage"), None);
    }

    #[test]
    fn an_old_kernel_is_named_as_the_likely_cause() {
        assert!(load_hint("5.10.0-30-amd64").contains("older than Linux 5.18"));
        let new = load_hint("6.1.0-57-amd64");
        assert!(
            !new.contains("older") && new.contains("6.1.0-57-amd64"),
            "{new}"
        );
    }
}
