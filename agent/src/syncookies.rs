//! Whether the kernel will issue SYN cookies for the program. It issues a
//! listener's cookie on request only while `net.ipv4.tcp_syncookies` is 2
//! (or the listener's SYN queue is already full), and the listener accepts
//! the ACK only for a cookie issued so. The agent sets 2 when a policy asks
//! for cookie mode, unless told to leave the setting alone.
use std::path::Path;

/// The setting, in the agent's network namespace (the host's, as deployed).
pub const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// What the host allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCookies {
    /// No policy uses SYN cookies.
    NotUsed,
    /// `tcp_syncookies` is 2; `set_from` holds the value the agent replaced.
    Available { set_from: Option<String> },
    /// Cookie mode is off, and why.
    Unavailable(String),
}

impl HostCookies {
    pub fn available(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }

    /// The line `rampart status` shows.
    pub fn describe(&self) -> String {
        match self {
            Self::NotUsed => "not used by any policy".into(),
            Self::Available { set_from: None } => "available (net.ipv4.tcp_syncookies = 2)".into(),
            Self::Available {
                set_from: Some(old),
            } => format!("available (net.ipv4.tcp_syncookies set to 2 by rampart; was {old})"),
            Self::Unavailable(why) => format!("unavailable: {why}"),
        }
    }
}

/// Checks `sysctl` (the path of `tcp_syncookies`) and, with `manage`, sets
/// it to 2. `wanted`: some policy has `syn_cookies` on or auto.
pub fn prepare(sysctl: &Path, wanted: bool, manage: bool) -> HostCookies {
    if !wanted {
        return HostCookies::NotUsed;
    }
    let current = match std::fs::read_to_string(sysctl) {
        Ok(v) => v.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return HostCookies::Unavailable(
                "this kernel has no SYN cookies (built without CONFIG_SYN_COOKIES); \
                 syn_cookies is off, everything else runs"
                    .into(),
            );
        }
        Err(e) => {
            return HostCookies::Unavailable(format!("cannot read {}: {e}", sysctl.display()));
        }
    };
    if current == "2" {
        return HostCookies::Available { set_from: None };
    }
    if !manage {
        return HostCookies::Unavailable(format!(
            "net.ipv4.tcp_syncookies is {current}, and cookie mode needs 2 \
             (set it, or let rampart: [flood] manage_tcp_syncookies = true)"
        ));
    }
    match std::fs::write(sysctl, "2") {
        Ok(()) => HostCookies::Available {
            set_from: Some(current),
        },
        Err(e) => HostCookies::Unavailable(format!(
            "net.ipv4.tcp_syncookies is {current} and could not be set to 2: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_two_when_managed_and_says_why_when_it_cannot() {
        let dir = std::env::temp_dir().join(format!("rampart-syncookies-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tcp_syncookies");
        std::fs::write(&f, "1\n").unwrap();
        assert_eq!(prepare(&f, false, true), HostCookies::NotUsed);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "1\n",
            "untouched when unused"
        );
        let left = prepare(&f, true, false);
        assert!(!left.available());
        assert!(left.describe().contains("is 1"), "{}", left.describe());
        assert_eq!(
            prepare(&f, true, true),
            HostCookies::Available {
                set_from: Some("1".into())
            }
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "2");
        assert_eq!(
            prepare(&f, true, false),
            HostCookies::Available { set_from: None }
        );
        let missing = prepare(&dir.join("absent"), true, true);
        assert!(missing.describe().contains("CONFIG_SYN_COOKIES"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
