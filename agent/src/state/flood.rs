//! The flood defence as the agent runs it: whether the kernel will issue
//! SYN cookies here, and what status and metrics show of each policy's
//! cookie mode.
use rampart_common::{abi::syn_cookies, flood::engaged_at};

use super::{Core, CoreError};
use crate::{api::FloodPolicy, clock, syncookies::HostCookies};

impl Core {
    /// Records what the host allows, tells the program, and says so once
    /// when it changes.
    pub(super) fn set_host_cookies(&mut self, host: HostCookies) -> Result<(), CoreError> {
        self.dp.set_syn_cookies_available(host.available())?;
        if host != self.syn_cookies {
            match &host {
                HostCookies::Unavailable(why) => {
                    tracing::warn!(reason = %why, "SYN cookie mode is off; every other defence runs");
                }
                HostCookies::Available {
                    set_from: Some(old),
                } => {
                    tracing::warn!(was = %old, "set net.ipv4.tcp_syncookies to 2 for SYN cookie mode");
                }
                HostCookies::Available { set_from: None } => {
                    tracing::info!("SYN cookie mode available");
                }
                HostCookies::NotUsed => {}
            }
        }
        // A later check that finds 2 does not forget who set it.
        self.syn_cookies = match (&self.syn_cookies, host) {
            (
                HostCookies::Available {
                    set_from: Some(old),
                },
                HostCookies::Available { set_from: None },
            ) => HostCookies::Available {
                set_from: Some(old.clone()),
            },
            (_, host) => host,
        };
        Ok(())
    }

    /// Each configured policy's cookie mode and whether it is engaged now.
    pub fn flood_policies(&self) -> Vec<FloodPolicy> {
        let states = self.dp.flood_states().unwrap_or_default();
        let now = clock::mono_ns();
        let mut out: Vec<FloodPolicy> = Vec::new();
        for (i, p) in self.dp.policies().unwrap_or_default().iter().enumerate() {
            if i != p.group as usize {
                continue;
            }
            let name = self.policy_names.get(i).cloned().unwrap_or_default();
            let fs = states.get(i).copied().unwrap_or_default();
            let mode = match p.syn_cookies {
                syn_cookies::ON => "on",
                syn_cookies::AUTO => "auto",
                _ => "off",
            };
            out.push(FloodPolicy {
                name,
                syn_cookies: mode.into(),
                engaged: self.syn_cookies.available() && engaged_at(&fs, p, now),
                syn_above: p.syn_above,
                syns_last_second: fs.last_window_syns,
                new_sources_pps: p.new_pps,
            });
        }
        out
    }
}
