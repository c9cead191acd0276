//! Which interfaces auto mode protects: those that carry a default route,
//! kept through a brief route flap or a failed read of the routing table.
//! A moment without a default route (a DHCP renewal, a routing daemon's
//! restart) must never detach the filter: an interface is let go only once
//! its route has been gone for `ROUTE_GRACE`.
use std::{collections::BTreeMap, time::Duration};

/// How long an interface stays protected after its default route went.
pub const ROUTE_GRACE: Duration = Duration::from_secs(60);

/// The interfaces auto mode chose, and when each last had a default route.
#[derive(Default)]
pub struct RouteMemory {
    last_routed: BTreeMap<String, u64>,
    /// The read error being reported, so a failing table is logged once.
    failing: Option<String>,
}

impl RouteMemory {
    /// The interfaces to protect, from a read of the default routes at
    /// `now_ns` (monotonic). A failed read keeps every interface chosen so
    /// far: nothing is known, and the attachments stay.
    pub fn choose(&mut self, read: std::io::Result<Vec<String>>, now_ns: u64) -> Vec<String> {
        match read {
            Ok(routed) => {
                if self.failing.take().is_some() {
                    tracing::info!("the routing table reads again");
                }
                for name in routed {
                    self.last_routed.insert(name, now_ns);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "cannot read the routing table; keeping the interfaces attached");
                }
                self.failing = Some(msg);
                for seen in self.last_routed.values_mut() {
                    *seen = now_ns;
                }
            }
        }
        let grace = ROUTE_GRACE.as_nanos() as u64;
        self.last_routed.retain(|name, seen| {
            let keep = now_ns.saturating_sub(*seen) <= grace;
            if !keep {
                tracing::info!(interface = %name, "no default route for {}s: no longer protected in auto mode", ROUTE_GRACE.as_secs());
            }
            keep
        });
        // Sorted by name: a stable order keeps each interface's counter slot.
        self.last_routed.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn routes(names: &[&str]) -> std::io::Result<Vec<String>> {
        Ok(names.iter().map(|n| (*n).to_string()).collect())
    }

    #[test]
    fn a_brief_route_flap_keeps_the_interface() {
        let mut m = RouteMemory::default();
        assert_eq!(m.choose(routes(&["eth0"]), 10 * S), ["eth0"]);
        assert_eq!(m.choose(routes(&[]), 12 * S), ["eth0"], "route gone 2 s");
        assert_eq!(m.choose(routes(&[]), 70 * S), ["eth0"], "gone 60 s");
        assert!(
            m.choose(routes(&[]), 71 * S).is_empty(),
            "gone past the grace"
        );
    }

    #[test]
    fn a_failed_read_keeps_everything_however_long() {
        let mut m = RouteMemory::default();
        m.choose(routes(&["eth0", "eth1"]), S);
        let err = || Err(std::io::Error::other("EIO"));
        assert_eq!(m.choose(err(), 2 * S), ["eth0", "eth1"]);
        assert_eq!(m.choose(err(), 500 * S), ["eth0", "eth1"]);
        // Reads work again: the grace runs from the last failed read.
        assert_eq!(m.choose(routes(&["eth1"]), 501 * S), ["eth0", "eth1"]);
        assert_eq!(m.choose(routes(&["eth1"]), 600 * S), ["eth1"]);
    }

    #[test]
    fn a_moved_default_route_adds_the_new_interface_at_once() {
        let mut m = RouteMemory::default();
        m.choose(routes(&["eth1"]), S);
        assert_eq!(m.choose(routes(&["eth0"]), 2 * S), ["eth0", "eth1"]);
    }
}
