//! Rate-limit policies as operators write them, and their kernel form.
use std::time::Duration;

use rampart_common::{
    abi::{self, Policy, policy_flag},
    bucket::{MAX_BURST, MAX_RATE, fill_ns},
    decide::{MAX_BAN_FACTOR, MAX_BAN_NS},
};
use serde::{Deserialize, Serialize};

/// Protocols a policy matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

impl Protocol {
    fn abi(self) -> u8 {
        match self {
            Self::Any => abi::proto::ANY,
            Self::Tcp => abi::proto::TCP,
            Self::Udp => abi::proto::UDP,
            Self::Icmp => abi::proto::ICMP,
        }
    }
}

/// One policy as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination port ranges ("443", "8000-8080"); empty matches any port
    /// and also non-first fragments.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Packets per second allowed per source.
    pub pps: u64,
    /// Bucket size in packets (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Optional bytes per second per source.
    #[serde(default)]
    pub bps: Option<u64>,
    #[serde(default)]
    pub bytes_burst: Option<u64>,
    /// Sources are aggregated to these prefix lengths (default /32 and /64).
    #[serde(default = "default_v4_prefix")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// Drops over the limit that start a ban (0: never ban).
    #[serde(default)]
    pub ban_threshold: u32,
    #[serde(default = "default_ban_time", with = "humantime_serde")]
    pub ban_time: Duration,
    #[serde(default = "default_ban_factor")]
    pub ban_repeat_factor: u32,
    #[serde(default = "default_ban_max", with = "humantime_serde")]
    pub ban_max: Duration,
    #[serde(default)]
    pub dry_run: bool,
    /// TCP only: answer SYNs from unverified sources with SYN cookies from
    /// the program, always (`on`) or only during a SYN flood (`auto`).
    #[serde(default)]
    pub syn_cookies: SynCookies,
    /// `auto`: SYNs per second to the policy's ports (whole host) over which
    /// cookie mode engages.
    #[serde(default = "default_syn_above")]
    pub syn_cookies_above: u32,
    /// Packets per second, all together, from sources the policy does not
    /// track yet (0: no budget).
    #[serde(default = "default_new_sources_pps")]
    pub new_sources_pps: u64,
    /// The newcomer budget's bucket size (default: twice `new_sources_pps`).
    #[serde(default)]
    pub new_sources_burst: Option<u64>,
    /// What the traffic detector does when the policy's traffic departs
    /// from its learnt normal.
    #[serde(default)]
    pub detect: Detect,
}

/// [`PolicySpec::detect`]: the detector's ladder of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detect {
    /// Not watched, and its packets cost the detector nothing (the
    /// default: watching costs every packet of the policy a little, see
    /// docs/benchmarks.md).
    #[default]
    Off,
    /// Reported: log, audit, `rampart anomalies`, metrics.
    Alert,
    /// Reported, and the policy's flood defence engaged while it lasts.
    Defend,
}

impl Detect {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Alert => "alert",
            Self::Defend => "defend",
        }
    }
}

/// [`PolicySpec::syn_cookies`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    #[default]
    Off,
    On,
    Auto,
}

impl SynCookies {
    fn abi(self) -> u8 {
        match self {
            Self::Off => abi::syn_cookies::OFF,
            Self::On => abi::syn_cookies::ON,
            Self::Auto => abi::syn_cookies::AUTO,
        }
    }
}

/// SYNs per second over which `auto` engages: well above what an API host
/// accepts in normal use, far below any flood worth the name.
pub const DEFAULT_SYN_ABOVE: u32 = 2000;
/// New sources per second a policy admits in total: a busy API host sees a
/// few hundred new clients a second; a spoofed flood, millions.
pub const DEFAULT_NEW_SOURCES_PPS: u64 = 5000;

fn default_syn_above() -> u32 {
    DEFAULT_SYN_ABOVE
}
fn default_new_sources_pps() -> u64 {
    DEFAULT_NEW_SOURCES_PPS
}

fn default_v4_prefix() -> u8 {
    32
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_ban_time() -> Duration {
    Duration::from_secs(60)
}
fn default_ban_factor() -> u32 {
    2
}
fn default_ban_max() -> Duration {
    Duration::from_secs(3600)
}

/// An inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a port or port range (expected e.g. 443 or 8000-8080)");
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(format!("port range '{s}' is reversed (write {hi}-{lo})"));
        }
        Ok(Self { lo, hi })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.collect_str(&self.lo)
        } else {
            s.collect_str(&format_args!("{}-{}", self.lo, self.hi))
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u16::try_from(n)
                .map(|p| Self { lo: p, hi: p })
                .map_err(|_| {
                    serde::de::Error::custom(format!("port {n} is out of range (0-65535)"))
                }),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How long an unused slot is kept for its source: long enough to refill its
/// bucket (a refilled bucket loses nothing when evicted), at least a second.
const MIN_IDLE: Duration = Duration::from_secs(1);

impl PolicySpec {
    /// Checks the bounds the kernel arithmetic relies on; the message names
    /// the field and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if self.name.is_empty() {
            return Err("policy name must not be empty".into());
        }
        if self.pps == 0 || self.pps > MAX_RATE {
            return Err(format!(
                "policy '{n}': pps must be 1 to {MAX_RATE}, got {}",
                self.pps
            ));
        }
        let burst = self.burst.unwrap_or(self.pps);
        if burst == 0 || burst > MAX_BURST {
            return Err(format!(
                "policy '{n}': burst must be 1 to {MAX_BURST}, got {burst}"
            ));
        }
        if let Some(bps) = self.bps {
            if bps == 0 || bps > MAX_RATE {
                return Err(format!(
                    "policy '{n}': bps must be 1 to {MAX_RATE}, got {bps}"
                ));
            }
            let b = self.bytes_burst.unwrap_or(bps);
            if !(65535..=MAX_BURST).contains(&b) {
                return Err(format!(
                    "policy '{n}': bytes_burst must be 65535 (one largest packet) to {MAX_BURST}, got {b}"
                ));
            }
        } else if self.bytes_burst.is_some() {
            return Err(format!("policy '{n}': bytes_burst needs bps"));
        }
        if self.ipv4_prefix == 0 || self.ipv4_prefix > 32 {
            return Err(format!(
                "policy '{n}': ipv4_prefix must be 1 to 32, got {}",
                self.ipv4_prefix
            ));
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err(format!(
                "policy '{n}': ipv6_prefix must be 1 to 128, got {}",
                self.ipv6_prefix
            ));
        }
        let max_ban = Duration::from_nanos(MAX_BAN_NS);
        if self.ban_time.is_zero() || self.ban_time > max_ban {
            return Err(format!(
                "policy '{n}': ban_time must be more than 0 and at most 366 days"
            ));
        }
        if self.ban_max < self.ban_time || self.ban_max > max_ban {
            return Err(format!(
                "policy '{n}': ban_max must be at least ban_time and at most 366 days"
            ));
        }
        if self.ban_repeat_factor == 0 || self.ban_repeat_factor > MAX_BAN_FACTOR {
            return Err(format!(
                "policy '{n}': ban_repeat_factor must be 1 to {MAX_BAN_FACTOR}, got {}",
                self.ban_repeat_factor
            ));
        }
        if self.syn_cookies != SynCookies::Off && self.protocol != Protocol::Tcp {
            return Err(format!(
                "policy '{n}': syn_cookies applies only to protocol = \"tcp\" (this policy is \"{}\"); \
                 set syn_cookies = \"off\" or make the policy TCP",
                format!("{:?}", self.protocol).to_lowercase()
            ));
        }
        if self.syn_cookies == SynCookies::Auto && self.syn_cookies_above == 0 {
            return Err(format!(
                "policy '{n}': syn_cookies_above must be at least 1 SYN per second (use syn_cookies = \"on\" to answer every SYN)"
            ));
        }
        if self.new_sources_pps > MAX_RATE {
            return Err(format!(
                "policy '{n}': new_sources_pps must be 0 (no budget) to {MAX_RATE}, got {}",
                self.new_sources_pps
            ));
        }
        match (self.new_sources_pps, self.new_sources_burst) {
            (0, Some(_)) => {
                return Err(format!(
                    "policy '{n}': new_sources_burst needs new_sources_pps above 0"
                ));
            }
            (_, Some(b)) if b == 0 || b > MAX_BURST => {
                return Err(format!(
                    "policy '{n}': new_sources_burst must be 1 to {MAX_BURST}, got {b}"
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The kernel form of each port range of this policy (one entry per range;
    /// a policy without ports is one entry).
    pub fn to_abi(&self) -> Vec<Policy> {
        let burst = self.burst.unwrap_or(self.pps);
        let bps = self.bps.unwrap_or(0);
        let bytes_burst = if bps == 0 {
            0
        } else {
            self.bytes_burst.unwrap_or(bps)
        };
        let pps_fill = fill_ns(self.pps, burst);
        let bps_fill = fill_ns(bps, bytes_burst);
        let new_burst = if self.new_sources_pps == 0 {
            0
        } else {
            self.new_sources_burst
                .unwrap_or(self.new_sources_pps.saturating_mul(2).min(MAX_BURST))
        };
        let idle = Duration::from_nanos(pps_fill.max(bps_fill)).max(MIN_IDLE);
        let observe = if self.detect == Detect::Off {
            0
        } else {
            policy_flag::OBSERVE
        };
        let base = Policy {
            proto: self.protocol.abi(),
            flags: observe
                | if self.dry_run {
                    policy_flag::DRY_RUN
                } else {
                    0
                },
            v4_prefix: self.ipv4_prefix,
            v6_prefix: self.ipv6_prefix,
            port_lo: 0,
            port_hi: u16::MAX,
            ban_threshold: self.ban_threshold,
            ban_factor: self.ban_repeat_factor,
            pps: self.pps,
            pps_burst: burst,
            bps,
            bps_burst: bytes_burst,
            pps_fill_ns: pps_fill,
            bps_fill_ns: bps_fill,
            idle_ns: idle.as_nanos() as u64,
            ban_base_ns: self.ban_time.as_nanos() as u64,
            ban_max_ns: self.ban_max.as_nanos() as u64,
            new_pps: self.new_sources_pps,
            new_burst,
            new_fill_ns: fill_ns(self.new_sources_pps, new_burst),
            syn_above: self.syn_cookies_above,
            syn_cookies: self.syn_cookies.abi(),
            group: 0,
            port_shift: 0,
            pad: 0,
        };
        if self.ports.is_empty() {
            return vec![base];
        }
        self.ports
            .iter()
            .map(|r| Policy {
                flags: base.flags | policy_flag::HAS_PORTS,
                port_lo: r.lo,
                port_hi: r.hi,
                port_shift: rampart_common::sketch::port_shift(r.lo, r.hi),
                ..base
            })
            .collect()
    }

    /// A policy with defaults for everything but its name, protocol, ports and rate.
    pub fn simple(
        name: &str,
        protocol: Protocol,
        ports: &[(u16, u16)],
        pps: u64,
        burst: u64,
    ) -> Self {
        Self {
            name: name.into(),
            protocol,
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            pps,
            burst: Some(burst),
            bps: None,
            bytes_burst: None,
            ipv4_prefix: default_v4_prefix(),
            ipv6_prefix: default_v6_prefix(),
            ban_threshold: 0,
            ban_time: default_ban_time(),
            ban_repeat_factor: default_ban_factor(),
            ban_max: default_ban_max(),
            dry_run: false,
            syn_cookies: SynCookies::Off,
            syn_cookies_above: DEFAULT_SYN_ABOVE,
            new_sources_pps: DEFAULT_NEW_SOURCES_PPS,
            new_sources_burst: None,
            detect: Detect::default(),
        }
    }
}

/// A policy entry under the traffic detector's defence: cookie mode
/// engaged (for `auto`), and the newcomer budget cut to `share` of its own
/// (at least one packet a second).
pub fn defended(p: &Policy, share: f64) -> Policy {
    let (new_pps, new_burst) = if p.new_pps == 0 {
        (0, 0)
    } else {
        let cut = |v: u64| ((v as f64 * share) as u64).max(1);
        (cut(p.new_pps), cut(p.new_burst))
    };
    Policy {
        flags: p.flags | policy_flag::DEFEND,
        new_pps,
        new_burst,
        new_fill_ns: fill_ns(new_pps, new_burst),
        ..*p
    }
}

/// The kernel's policy array for policies in order, each entry with the name
/// of the policy it came from. The entries of one policy share its first
/// entry's flood-defence state (`group`): its SYN rate and newcomer budget
/// are the policy's, whatever its port ranges.
pub fn kernel_policies<'a>(
    specs: impl IntoIterator<Item = &'a PolicySpec>,
) -> Vec<(String, Policy)> {
    let mut out = Vec::new();
    for spec in specs {
        let group = out.len().min(u8::MAX as usize) as u8;
        for e in spec.to_abi() {
            out.push((spec.name.clone(), Policy { group, ..e }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_defended_policy_engages_cookies_and_cuts_its_newcomer_budget() {
        let spec = PolicySpec {
            syn_cookies: SynCookies::Auto,
            ..PolicySpec::simple("web", Protocol::Tcp, &[(443, 443)], 100, 100)
        };
        let p = spec.to_abi()[0];
        let d = defended(&p, 0.25);
        assert_ne!(d.flags & policy_flag::DEFEND, 0);
        assert_eq!(d.new_pps, p.new_pps / 4);
        assert_eq!(d.new_burst, p.new_burst / 4);
        assert_eq!(d.new_fill_ns, fill_ns(d.new_pps, d.new_burst));
        // What the program reads: cookie mode engaged without a SYN.
        let fs = rampart_common::abi::FloodState::default();
        assert!(!rampart_common::flood::cookies_engaged(&fs, &p));
        assert!(rampart_common::flood::cookies_engaged(&fs, &d));
        // No budget stays no budget.
        let none = Policy {
            new_pps: 0,
            new_burst: 0,
            ..p
        };
        assert_eq!(defended(&none, 0.25).new_pps, 0);
    }
}
