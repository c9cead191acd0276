//! Traffic for the live-agent tests: floods from the client namespace, and
//! a count of what a source got past XDP into the server's stack.
use std::process::Stdio;

use crate::{lab::Lab, netns::sh};

/// A `ping -f` for a number of seconds; `finish` waits for it and reads
/// how many requests were sent and answered. Killed if dropped unfinished.
pub struct PingFlood(Option<std::process::Child>);

impl PingFlood {
    pub fn start(lab: &Lab, from: &str, secs: u32) -> Self {
        Self(Some(
            lab.cli
                .command("ping")
                .args(["-f", "-w", &secs.to_string(), "-I", from, &lab.server_ip])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start ping -f"),
        ))
    }

    /// (sent, answered).
    pub fn finish(mut self) -> (u64, u64) {
        let Some(child) = self.0.take() else {
            return (0, 0);
        };
        let out = child.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        let stat = text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("");
        let num = |key: &str| {
            stat.split(',')
                .find(|p| p.contains(key))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"))
    }
}

impl Drop for PingFlood {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An hping3 ICMP flood from `from` (one of the client's addresses), paced
/// so that it leaves the agent and the load generator a CPU on a 2-CPU host.
pub struct Flood(std::process::Child);

impl Flood {
    pub fn start(lab: &Lab, from: &str) -> Self {
        Self(
            lab.cli
                .command("hping3")
                .args(["--icmp", "-i", "u20", "-q", "-a", from, &lab.server_ip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start hping3"),
        )
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts packets from `ip` that reach the server's network stack (after
/// XDP), with an nftables counter at the earliest hook.
pub struct Delivered {
    ns: String,
}

impl Delivered {
    pub fn watch(lab: &Lab, ip: &str) -> anyhow::Result<Self> {
        let ns = lab.srv.name.clone();
        let nft = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &ns, "nft"];
            full.extend_from_slice(args);
            sh(&full)
        };
        nft(&["add", "table", "inet", "rp_leak"])?;
        nft(&[
            "add",
            "chain",
            "inet",
            "rp_leak",
            "pre",
            "{ type filter hook prerouting priority -500 ; }",
        ])?;
        nft(&[
            "add", "rule", "inet", "rp_leak", "pre", "ip", "saddr", ip, "counter",
        ])?;
        Ok(Self { ns })
    }

    pub fn packets(&self) -> u64 {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns, "nft", "list", "table", "inet", "rp_leak",
        ])
        .unwrap_or_default();
        out.split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    }
}
