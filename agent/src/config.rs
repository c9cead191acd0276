//! The agent's configuration: one TOML file, validated whole before anything
//! is applied. Errors name the file, line and key, what was wrong and what is
//! allowed; unknown keys are errors.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use rampart_common::decide::List;

use crate::{feed::FeedSpec, policy::PolicySpec, prefix::Prefix};

/// The configuration used when the config file does not exist.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

pub const DEFAULT_PATH: &str = "/etc/rampart/rampart.toml";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub capacity: Capacities,
    #[serde(default)]
    pub flood: FloodSection,
    #[serde(default)]
    pub detect: DetectSection,
    #[serde(default)]
    pub guards: GuardsSection,
    #[serde(default)]
    pub protected: ProtectedSection,
    #[serde(default)]
    pub bans: BansSection,
    #[serde(default)]
    pub allowlist: ListSection,
    #[serde(default)]
    pub blocklist: ListSection,
    #[serde(default, rename = "policy")]
    pub policies: Vec<Spanned<PolicySpec>>,
    #[serde(default, rename = "feed")]
    pub feeds: Vec<Spanned<FeedSpec>>,
    /// Present: follow a CrowdSec local API's decisions as a bouncer.
    #[serde(default)]
    pub crowdsec: Option<CrowdsecSection>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native where the driver supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Malformed {
    #[default]
    Drop,
    Pass,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    pub dry_run: bool,
    pub malformed: Malformed,
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    /// Where maps and links are pinned (a versioned directory below it).
    pub bpffs: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach_mode: AttachMode::Auto,
            dry_run: false,
            malformed: Malformed::Drop,
            state_dir: PathBuf::from("/var/lib/rampart"),
            log_format: LogFormat::Text,
            bpffs: PathBuf::from("/sys/fs/bpf/rampart"),
        }
    }
}

/// Limits on entries that would pass or drop a large part of the Internet.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardsSection {
    /// Allowlist entries added over the socket shorter than these need
    /// `--force` (recorded in the audit log): `allow add 0.0.0.0/0` would
    /// pass every packet unchecked.
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
}

impl Default for GuardsSection {
    fn default() -> Self {
        Self {
            min_prefix_v4: 8,
            min_prefix_v6: 32,
        }
    }
}

impl GuardsSection {
    /// The entries of `prefixes` broader than the minimum for their family.
    pub fn too_broad<'a>(&self, prefixes: &'a [Prefix]) -> Vec<&'a Prefix> {
        prefixes
            .iter()
            .filter(|p| {
                let min = if p.is_ipv4() {
                    self.min_prefix_v4
                } else {
                    self.min_prefix_v6
                };
                p.prefix_len() < min
            })
            .collect()
    }
}

/// Flood defence settings for the whole host (each policy sets its own
/// SYN cookie mode and newcomer budget).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FloodSection {
    /// How long a source that proved it can receive (a valid SYN cookie, or
    /// an established connection) skips the cookie challenge and the
    /// newcomer budget.
    #[serde(with = "humantime_serde")]
    pub verified_ttl: Duration,
    /// Set `net.ipv4.tcp_syncookies` to 2 when a policy uses SYN cookies
    /// (the kernel issues the program's cookies only then). Off: the agent
    /// leaves the setting alone, and cookie mode is off unless it is 2.
    pub manage_tcp_syncookies: bool,
}

/// The traffic detector's settings for the whole host (each policy sets
/// its own `detect` action). See `anomaly` for what they mean.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSection {
    /// Half-life of the learnt baselines.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Deviations above the baseline that count as anomalous.
    pub threshold: f64,
    /// Seconds in a row over the threshold before an anomaly starts.
    pub consecutive: u32,
    /// Seconds in a row under half the threshold before it ends.
    pub calm: u32,
    /// After first start, how long the detector only learns.
    #[serde(with = "humantime_serde")]
    pub learning: Duration,
    /// A feature's deviation never counts as less than this share of its mean.
    pub min_relative_deviation: f64,
    /// Values under these never count as anomalous, however they score.
    pub floors: Floors,
    /// Under `defend`, the newcomer budget is this share of the policy's.
    pub defend_budget_share: f64,
    /// Past anomalies kept for `rampart anomalies`.
    pub history: usize,
}

/// [`DetectSection::floors`], per second (drop share: per thousand packets).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Floors {
    pub packets: f64,
    pub bytes: f64,
    pub syns: f64,
    pub new_sources: f64,
    pub distinct_sources: f64,
    pub drop_share: f64,
}

impl Default for Floors {
    fn default() -> Self {
        let f = crate::anomaly::Settings::default().floors;
        Self {
            packets: f[0],
            bytes: f[1],
            syns: f[2],
            new_sources: f[3],
            distinct_sources: f[4],
            drop_share: f[5],
        }
    }
}

impl Default for DetectSection {
    fn default() -> Self {
        let s = crate::anomaly::Settings::default();
        Self {
            half_life: Duration::from_secs_f64(s.half_life),
            threshold: s.threshold,
            consecutive: s.consecutive,
            calm: s.calm,
            learning: Duration::from_secs(s.learning),
            min_relative_deviation: s.min_relative_deviation,
            floors: Floors::default(),
            defend_budget_share: 0.25,
            history: 100,
        }
    }
}

impl DetectSection {
    /// The detector's settings.
    pub fn settings(&self) -> crate::anomaly::Settings {
        let f = &self.floors;
        crate::anomaly::Settings {
            half_life: self.half_life.as_secs_f64(),
            threshold: self.threshold,
            consecutive: self.consecutive,
            calm: self.calm,
            learning: self.learning.as_secs(),
            floors: [
                f.packets,
                f.bytes,
                f.syns,
                f.new_sources,
                f.distinct_sources,
                f.drop_share,
            ],
            min_relative_deviation: self.min_relative_deviation,
        }
    }

    /// Each field out of its bounds, with what is allowed.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut check = |field: &str, ok: bool, allowed: &str, got: String| {
            if !ok {
                out.push((
                    format!("detect.{field}"),
                    format!("must be {allowed}, got {got}"),
                ));
            }
        };
        let hl = self.half_life;
        check(
            "half_life",
            (Duration::from_secs(10)..=Duration::from_secs(30 * 86_400)).contains(&hl),
            "between 10s and 30 days",
            humantime::format_duration(hl).to_string(),
        );
        check(
            "threshold",
            (2.0..=1000.0).contains(&self.threshold),
            "2 to 1000 deviations",
            self.threshold.to_string(),
        );
        check(
            "consecutive",
            (1..=300).contains(&self.consecutive),
            "1 to 300 seconds",
            self.consecutive.to_string(),
        );
        check(
            "calm",
            (1..=3600).contains(&self.calm),
            "1 to 3600 seconds",
            self.calm.to_string(),
        );
        check(
            "learning",
            self.learning <= Duration::from_secs(30 * 86_400),
            "at most 30 days",
            humantime::format_duration(self.learning).to_string(),
        );
        check(
            "min_relative_deviation",
            (0.01..=10.0).contains(&self.min_relative_deviation),
            "0.01 to 10",
            self.min_relative_deviation.to_string(),
        );
        check(
            "defend_budget_share",
            self.defend_budget_share > 0.0 && self.defend_budget_share <= 1.0,
            "above 0 and at most 1",
            self.defend_budget_share.to_string(),
        );
        check(
            "history",
            (1..=10_000).contains(&self.history),
            "1 to 10000",
            self.history.to_string(),
        );
        let f = &self.floors;
        for (name, v) in [
            ("packets", f.packets),
            ("bytes", f.bytes),
            ("syns", f.syns),
            ("new_sources", f.new_sources),
            ("distinct_sources", f.distinct_sources),
            ("drop_share", f.drop_share),
        ] {
            check(
                &format!("floors.{name}"),
                v.is_finite() && v >= 0.0 && (name != "drop_share" || v <= 1000.0),
                if name == "drop_share" {
                    "0 to 1000 (per thousand packets)"
                } else {
                    "0 or more"
                },
                v.to_string(),
            );
        }
        out
    }
}

/// Longest `verified_ttl`: a day; past it an address may well have changed hands.
pub const MAX_VERIFIED_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for FloodSection {
    fn default() -> Self {
        Self {
            verified_ttl: Duration::from_secs(3600),
            manage_tcp_syncookies: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    pub socket: PathBuf,
    /// Octal permission bits of the socket, e.g. "0660".
    pub socket_mode: String,
    /// The group (besides root) allowed to use the socket.
    pub socket_group: String,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/rampart/rampart.sock"),
            socket_mode: "0660".into(),
            socket_group: "rampart".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9717".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    pub sample_every: u32,
    pub max_per_second: u32,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            sample_every: 64,
            max_per_second: 1000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectedSection {
    pub include_host_addresses: bool,
    pub ranges: Vec<Spanned<String>>,
}

/// Limits on the bans the program starts by itself.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BansSection {
    /// Ranges never banned by the program (still metered and rate-limited):
    /// bans key on the claimed source, so a spoofed flood could get a
    /// partner's NAT gateway banned.
    pub exempt: Vec<Spanned<String>>,
}

impl Default for ProtectedSection {
    fn default() -> Self {
        Self {
            include_host_addresses: true,
            ranges: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListSection {
    pub entries: Vec<Spanned<String>>,
    pub dry_run: bool,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.key, self.message
            )
        }
    }
}

/// All problems found in a config file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated configuration and its parsed values.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    pub source: String,
    pub allowlist: Vec<Prefix>,
    pub blocklist: Vec<Prefix>,
    pub protected: Vec<Prefix>,
    pub ban_exempt: Vec<Prefix>,
    pub metrics_addr: SocketAddr,
    pub socket_mode: u32,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Loads the config file, or the embedded default when `path` does not exist.
pub fn load(path: &Path) -> Result<Validated, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &path.display().to_string()),
        Err(e) => {
            let message = if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist; nothing was changed (a missing file never means the \
                 embedded default once a path is given or the agent is running)"
                    .to_string()
            } else {
                format!("cannot read: {e}")
            };
            Err(ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                key: String::new(),
                message,
            }]))
        }
    }
}

/// The config an agent starts with: the file at `path`, which must exist
/// when it was `given`. Only the default path may be absent: then the
/// embedded default runs, and the second value says so.
pub fn load_at_start(path: &Path, given: bool) -> Result<(Validated, bool), ConfigErrors> {
    if !given && !path.exists() {
        return parse(EMBEDDED_DEFAULT, "<embedded default>").map(|v| (v, true));
    }
    load(path).map(|v| (v, false))
}

/// Parses and validates a config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Validated, ConfigErrors> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        ConfigErrors(vec![ConfigError {
            file: file.into(),
            line,
            key: String::new(),
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut errors = Vec::new();
    let mut err = |span: std::ops::Range<usize>, key: String, message: String| {
        errors.push(ConfigError {
            file: file.into(),
            line: line_of(text, span.start),
            key,
            message,
        });
    };
    let prefixes =
        |list: &[Spanned<String>],
         key: &str,
         err: &mut dyn FnMut(std::ops::Range<usize>, String, String)| {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                match e.get_ref().parse::<Prefix>() {
                    Ok(p) => out.push(p),
                    Err(m) => err(e.span(), format!("{key}[{i}]"), m.to_string()),
                }
            }
            out
        };
    let allowlist = prefixes(&config.allowlist.entries, "allowlist.entries", &mut err);
    let blocklist = prefixes(&config.blocklist.entries, "blocklist.entries", &mut err);
    let protected = prefixes(&config.protected.ranges, "protected.ranges", &mut err);
    let ban_exempt = prefixes(&config.bans.exempt, "bans.exempt", &mut err);
    let exempt = PerFamily::count(ban_exempt.iter());
    let most = exempt.v4.max(exempt.v6);
    if most > u64::from(rampart_common::abi::NO_BAN_ENTRIES) {
        err(
            0..0,
            "bans.exempt".into(),
            format!(
                "{most} ranges of one family; at most {} per family",
                rampart_common::abi::NO_BAN_ENTRIES
            ),
        );
    }
    let caps = config.capacity;
    for (list, entries, field) in [
        (List::Block, &blocklist, "blocklist.entries"),
        (List::Allow, &allowlist, "allowlist.entries"),
    ] {
        let wanted = PerFamily::count(entries.iter());
        if let Err(full) = caps.check_room(list, PerFamily::default(), wanted) {
            err(
                0..0,
                field.into(),
                format!(
                    "{} IPv4 and {} IPv6 entries exceed capacity.{}_v4/{}_v6 = {}/{}",
                    wanted.v4,
                    wanted.v6,
                    list.name(),
                    list.name(),
                    full.capacity.v4,
                    full.capacity.v6
                ),
            );
        }
    }
    for (name, value) in [
        ("capacity.allow_v4", caps.allow_v4),
        ("capacity.allow_v6", caps.allow_v6),
        ("capacity.block_v4", caps.block_v4),
        ("capacity.block_v6", caps.block_v6),
        ("capacity.bans_v4", caps.bans_v4),
        ("capacity.bans_v6", caps.bans_v6),
    ] {
        if !(1..=1 << 24).contains(&value) {
            err(
                0..0,
                name.into(),
                format!("must be 1 to 16777216, got {value}"),
            );
        }
    }
    if !(1..=1 << 22).contains(&caps.rate_sets) {
        err(
            0..0,
            "capacity.rate_sets".into(),
            format!("must be 1 to 4194304, got {}", caps.rate_sets),
        );
    }
    let g = &config.guards;
    if !(1..=32).contains(&g.min_prefix_v4) {
        err(
            0..0,
            "guards.min_prefix_v4".into(),
            format!("must be 1 to 32, got {}", g.min_prefix_v4),
        );
    }
    if !(1..=128).contains(&g.min_prefix_v6) {
        err(
            0..0,
            "guards.min_prefix_v6".into(),
            format!("must be 1 to 128, got {}", g.min_prefix_v6),
        );
    }
    let ttl = config.flood.verified_ttl;
    if ttl < Duration::from_secs(1) || ttl > MAX_VERIFIED_TTL {
        err(
            0..0,
            "flood.verified_ttl".into(),
            format!(
                "must be between 1s and 24h, got {}",
                humantime::format_duration(ttl)
            ),
        );
    }
    for (field, m) in config.detect.problems() {
        err(0..0, field, m);
    }
    let mut abi_count = 0;
    let mut names = std::collections::HashSet::new();
    for (i, p) in config.policies.iter().enumerate() {
        let spec = p.get_ref();
        if let Err(m) = spec.validate() {
            err(p.span(), format!("policy[{i}]"), m);
        }
        if !names.insert(spec.name.clone()) {
            err(
                p.span(),
                format!("policy[{i}].name"),
                format!(
                    "'{}' is used by an earlier policy; names must be unique",
                    spec.name
                ),
            );
        }
        abi_count += spec.to_abi().len();
    }
    if abi_count > rampart_common::abi::MAX_POLICIES as usize {
        err(
            0..0,
            "policy".into(),
            format!(
                "{abi_count} policy entries (one per port range) exceed the maximum of {}",
                rampart_common::abi::MAX_POLICIES
            ),
        );
    }
    let mut feed_names = std::collections::HashSet::new();
    for (i, f) in config.feeds.iter().enumerate() {
        let spec = f.get_ref();
        if let Err(m) = spec.validate() {
            err(f.span(), format!("feed[{i}]"), m);
        }
        if !feed_names.insert(spec.name.clone()) {
            err(
                f.span(),
                format!("feed[{i}].name"),
                format!(
                    "'{}' is used by an earlier feed; names must be unique",
                    spec.name
                ),
            );
        }
    }
    if config.feeds.len() > crate::feed::MAX_FEEDS {
        err(
            0..0,
            "feed".into(),
            format!(
                "{} feeds exceed the maximum of {}",
                config.feeds.len(),
                crate::feed::MAX_FEEDS
            ),
        );
    }
    if let Some(cs) = &config.crowdsec {
        if let Err(m) = cs.validate() {
            err(0..0, "crowdsec".into(), m);
        }
    }
    let metrics_addr = match config.metrics.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            err(
                0..0,
                "metrics.listen".into(),
                format!(
                    "'{}' is not an address:port (e.g. 0.0.0.0:9717)",
                    config.metrics.listen
                ),
            );
            None
        }
    };
    let socket_mode = match u32::from_str_radix(
        config.control.socket_mode.trim_start_matches("0o"),
        8,
    ) {
        Ok(m) if m <= 0o777 && m & 0o007 == 0 => Some(m),
        _ => {
            err(
                0..0,
                "control.socket_mode".into(),
                format!(
                    "'{}' must be octal permission bits without access for others (e.g. 0660 or 0600)",
                    config.control.socket_mode
                ),
            );
            None
        }
    };
    if config.events.sample_every > 0 && config.events.max_per_second == 0 {
        err(
            0..0,
            "events.max_per_second".into(),
            "must be at least 1 while sampling is on (set sample_every = 0 to turn sampling off)"
                .into(),
        );
    }
    for (i, iface) in config.agent.interfaces.iter().enumerate() {
        if iface.is_empty()
            || iface.len() > 15
            || iface.contains('/')
            || iface.contains(char::is_whitespace)
        {
            err(
                0..0,
                format!("agent.interfaces[{i}]"),
                format!(
                    "'{iface}' is not an interface name (1 to 15 characters, no '/' or spaces)"
                ),
            );
        }
    }
    // Each interface counts in a slot of its own; slot 0 is the rest's.
    let most = rampart_common::abi::MAX_IFACE_SLOTS as usize - 1;
    if config.agent.interfaces.len() > most {
        err(
            0..0,
            "agent.interfaces".into(),
            format!(
                "{} interfaces listed; at most {most} (one program attachment and counter slot each)",
                config.agent.interfaces.len()
            ),
        );
    }
    // Section-level errors have no span of their own: point at the key's line.
    for e in &mut errors {
        if e.line == 1 && !e.key.is_empty() {
            let leaf = e
                .key
                .split('.')
                .next_back()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("");
            if let Some(pos) = text
                .find(&format!("{leaf} ="))
                .or_else(|| text.find(&format!("{leaf}=")))
            {
                e.line = line_of(text, pos);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Validated {
        metrics_addr: metrics_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9717))),
        socket_mode: socket_mode.unwrap_or(0o660),
        source: text.to_string(),
        allowlist,
        blocklist,
        protected,
        ban_exempt,
        config,
    })
}

/// Sizes of the tables, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacities {
    pub allow_v4: u32,
    pub allow_v6: u32,
    pub block_v4: u32,
    pub block_v6: u32,
    pub bans_v4: u32,
    pub bans_v6: u32,
    /// Sets of the rate table (rounded up to a power of two); each holds
    /// four sources. A spoofed flood reads 32 bytes of a random set per
    /// packet; the default's sets (65,536 sources, 512 KiB; 2.5 MiB with the
    /// buckets) stay in a core's cache, and at four times the size each read
    /// costs a cache miss (docs/benchmarks.md). A spoofed flood fills any
    /// size within milliseconds, so more sets buy room for legitimate
    /// sources in calm times, not resilience under attack.
    pub rate_sets: u32,
}

impl Capacities {
    /// The list capacities in `abi::list_table_index` order.
    pub fn lists(&self) -> [u32; 4] {
        [self.allow_v4, self.allow_v6, self.block_v4, self.block_v6]
    }

    /// How many entries of each family `list` holds at most.
    pub fn of_list(&self, list: List) -> PerFamily {
        let (v4, v6) = match list {
            List::Allow => (self.allow_v4, self.allow_v6),
            List::Block => (self.block_v4, self.block_v6),
        };
        PerFamily {
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    /// Whether `adding` new entries fit beside the `held` ones of `list`:
    /// the capacity rule that config validation, the control API, feed swaps
    /// and the kernel tables all apply.
    pub fn check_room(
        &self,
        list: List,
        held: PerFamily,
        adding: PerFamily,
    ) -> Result<(), ListFull> {
        let capacity = self.of_list(list);
        if fits(held.v4, adding.v4, capacity.v4) && fits(held.v6, adding.v6, capacity.v6) {
            Ok(())
        } else {
            Err(ListFull {
                list,
                held,
                adding,
                capacity,
            })
        }
    }
}

/// Whether `adding` more entries fit beside `held` in room for `capacity`.
pub fn fits(held: u64, adding: u64, capacity: u64) -> bool {
    held.saturating_add(adding) <= capacity
}

/// Counts of entries per address family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerFamily {
    pub v4: u64,
    pub v6: u64,
}

impl From<(u64, u64)> for PerFamily {
    fn from((v4, v6): (u64, u64)) -> Self {
        Self { v4, v6 }
    }
}

impl PerFamily {
    /// How many of `prefixes` are IPv4 and IPv6.
    pub fn count<'a>(prefixes: impl IntoIterator<Item = &'a Prefix>) -> Self {
        let mut out = Self::default();
        for p in prefixes {
            if p.is_ipv4() {
                out.v4 += 1;
            } else {
                out.v6 += 1;
            }
        }
        out
    }
}

/// A change refused because `list` has no room for it, with the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {} list is full: {}/{} IPv4 and {}/{} IPv6 entries, {}+{} more requested",
    list.name(), held.v4, capacity.v4, held.v6, capacity.v6, adding.v4, adding.v6
)]
pub struct ListFull {
    pub list: List,
    pub held: PerFamily,
    pub adding: PerFamily,
    pub capacity: PerFamily,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            allow_v4: 1 << 16,
            allow_v6: 1 << 16,
            block_v4: 1 << 20,
            block_v6: 1 << 18,
            bans_v4: 1 << 16,
            bans_v6: 1 << 16,
            rate_sets: 1 << 14,
        }
    }
}

/// The `[crowdsec]` config section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecSection {
    /// The local API (LAPI) base URL.
    #[serde(default = "default_url")]
    pub url: String,
    /// A file holding the bouncer key from `cscli bouncers add`.
    pub api_key_file: PathBuf,
    /// How often the decision stream is polled.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Decision types enforced as blocks; others (e.g. captcha) are ignored.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Fetch the whole decision set at every poll, not what changed: for
    /// nodes that share one bouncer key (the stream tracks each key's last
    /// pull, so on a shared key each node would miss what another pulled).
    #[serde(default)]
    pub full_sync: bool,
    /// Report this node's bans (and `block add --share`) to the LAPI.
    #[serde(default)]
    pub share: bool,
    /// A CA certificate (PEM) the LAPI's certificate is checked against,
    /// besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Sharing: a client certificate and key (PEM) the machine logs in
    /// with instead of a password (the LAPI's `agents_allowed_ou`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// The machine registered with `cscli machines add` (sharing only).
    #[serde(default)]
    pub machine_id: Option<String>,
    /// A file holding that machine's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This node's name in the scenarios it pushes (default: the host
    /// name); decisions under its own name are not pulled back.
    #[serde(default)]
    pub node: Option<String>,
    /// At most one push this often.
    #[serde(default = "default_push_interval", with = "humantime_serde")]
    pub push_interval: Duration,
    /// Decisions in one push at most.
    #[serde(default = "default_push_batch")]
    pub push_batch: usize,
    /// Decisions waiting for the LAPI at most; past it the oldest go, counted.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
    /// How long a shared block without a TTL lasts upstream.
    #[serde(default = "default_share_block_duration", with = "humantime_serde")]
    pub share_block_duration: Duration,
}

fn default_push_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_push_batch() -> usize {
    1000
}
fn default_queue_max() -> usize {
    50_000
}
fn default_share_block_duration() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// A node name fits a scenario: no '/', no spaces, short.
pub fn valid_node_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn default_url() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_types() -> Vec<String> {
    vec!["ban".into()]
}

impl CrowdsecSection {
    pub fn validate(&self) -> Result<(), String> {
        let u = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("url '{}' is not a URL: {e}", self.url))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("url '{}' must be http:// or https://", self.url));
        }
        if !self.api_key_file.is_absolute() {
            return Err(format!(
                "api_key_file '{}' must be an absolute path",
                self.api_key_file.display()
            ));
        }
        if self.poll < Duration::from_secs(1) || self.poll > Duration::from_secs(3600) {
            return Err("poll must be between 1s and 1h".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err("timeout must be between 1s and 5m".into());
        }
        if self.types.is_empty() {
            return Err("types must name at least one decision type (e.g. [\"ban\"])".into());
        }
        self.validate_sharing()
    }

    fn validate_sharing(&self) -> Result<(), String> {
        if let Some(node) = &self.node
            && !valid_node_name(node)
        {
            return Err(format!(
                "node '{node}' must be 1 to 63 letters, digits, '.', '-' or '_'"
            ));
        }
        for (key, f) in [
            ("ca_file", &self.ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ] {
            if let Some(f) = f
                && !f.is_absolute()
            {
                return Err(format!("{key} '{}' must be an absolute path", f.display()));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file go together".into());
        }
        if !self.share {
            return Ok(());
        }
        if self.tls_cert_file.is_some() {
            return self.validate_push_limits();
        }
        let Some(machine) = self.machine_id.as_deref().filter(|m| !m.is_empty()) else {
            return Err("share = true needs machine_id and password_file (a machine from `cscli machines add`), or tls_cert_file and tls_key_file".into());
        };
        if machine.len() > 128 || machine.chars().any(char::is_control) {
            return Err("machine_id must be at most 128 printable characters".into());
        }
        match &self.password_file {
            Some(f) if f.is_absolute() => {}
            Some(f) => {
                return Err(format!(
                    "password_file '{}' must be an absolute path",
                    f.display()
                ));
            }
            None => return Err("share = true needs password_file (the machine's password)".into()),
        }
        self.validate_push_limits()
    }

    fn validate_push_limits(&self) -> Result<(), String> {
        if self.push_interval < Duration::from_millis(100)
            || self.push_interval > Duration::from_secs(60)
        {
            return Err("push_interval must be between 100ms and 1m".into());
        }
        if !(1..=10_000).contains(&self.push_batch) {
            return Err(format!(
                "push_batch {} must be between 1 and 10000",
                self.push_batch
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_max) {
            return Err(format!(
                "queue_max {} must be between 1 and 1000000",
                self.queue_max
            ));
        }
        if self.share_block_duration < Duration::from_secs(1)
            || self.share_block_duration > Duration::from_secs(10 * 365 * 86_400)
        {
            return Err("share_block_duration must be between 1s and 10 years".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let v = parse(EMBEDDED_DEFAULT, "default").unwrap();
        assert_eq!(v.config.policies.len(), 1);
        assert!(v.config.protected.include_host_addresses);
    }

    #[test]
    fn unknown_keys_are_errors_with_line_numbers() {
        let e = parse("[agent]\ndry_run = true\nbogus = 1\n", "f.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("f.toml:3:"), "{s}");
        assert!(s.contains("unknown field `bogus`"), "{s}");
    }

    #[test]
    fn bad_entries_name_line_key_and_fix() {
        let text = "[blocklist]\nentries = [\n  \"192.0.2.1\",\n  \"10.1.2.3/8\",\n]\n";
        let e = parse(text, "f.toml").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, 4);
        assert_eq!(e.0[0].key, "blocklist.entries[1]");
        assert!(e.0[0].message.contains("10.0.0.0/8"), "{}", e.0[0].message);
    }

    #[test]
    fn policy_errors_point_at_the_policy() {
        let text = "[agent]\n\n[[policy]]\nname = \"a\"\npps = 0\n";
        let e = parse(text, "f.toml").unwrap_err();
        assert_eq!(e.0[0].key, "policy[0]");
        assert!(e.0[0].message.contains("pps must be 1"), "{e}");
        assert_eq!(e.0[0].line, 3);
    }

    #[test]
    fn more_interfaces_than_counter_slots_are_refused() {
        let names: Vec<String> = (0..64).map(|i| format!("\"eth{i}\"")).collect();
        let text = format!("[agent]\ninterfaces = [{}]\n", names.join(", "));
        let e = parse(&text, "f.toml").unwrap_err().to_string();
        assert!(e.contains("64 interfaces listed; at most 63"), "{e}");
        let ok = format!("[agent]\ninterfaces = [{}]\n", names[..63].join(", "));
        assert!(parse(&ok, "f.toml").is_ok());
    }

    #[test]
    fn flood_settings_are_validated_and_name_the_policy() {
        let text =
            "[[policy]]\nname = \"dns\"\nprotocol = \"udp\"\npps = 10\nsyn_cookies = \"on\"\n";
        let e = parse(text, "f.toml").unwrap_err();
        assert_eq!(e.0[0].key, "policy[0]");
        assert!(
            e.0[0]
                .message
                .contains("policy 'dns': syn_cookies applies only to protocol = \"tcp\""),
            "{e}"
        );
        for (text, needle) in [
            (
                "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\npps = 10\nsyn_cookies = \"sometimes\"\n",
                "unknown variant `sometimes`",
            ),
            (
                "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\npps = 10\nsyn_cookies = \"auto\"\nsyn_cookies_above = 0\n",
                "syn_cookies_above must be at least 1",
            ),
            (
                "[[policy]]\nname = \"web\"\npps = 10\nnew_sources_pps = 0\nnew_sources_burst = 5\n",
                "new_sources_burst needs new_sources_pps",
            ),
            ("[flood]\nverified_ttl = \"0s\"\n", "between 1s and 24h"),
        ] {
            let e = parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let ok = "[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [443]\npps = 10\nsyn_cookies = \"auto\"\n";
        let v = parse(ok, "f.toml").unwrap();
        let p = v.config.policies[0].get_ref().to_abi()[0];
        assert_eq!(p.syn_cookies, rampart_common::abi::syn_cookies::AUTO);
        assert_eq!(p.syn_above, crate::policy::DEFAULT_SYN_ABOVE);
        assert_eq!(p.new_pps, crate::policy::DEFAULT_NEW_SOURCES_PPS);
        assert_eq!(p.new_burst, 2 * crate::policy::DEFAULT_NEW_SOURCES_PPS);
    }

    #[test]
    fn the_detector_settings_are_checked_and_each_policy_picks_its_action() {
        for (text, needle) in [
            (
                "[detect]\nthreshold = 1.0\n",
                "detect.threshold: must be 2 to 1000",
            ),
            (
                "[detect]\nconsecutive = 0\n",
                "detect.consecutive: must be 1 to 300",
            ),
            (
                "[detect]\nhalf_life = \"1s\"\n",
                "detect.half_life: must be between 10s",
            ),
            (
                "[detect]\nlearning = \"60d\"\n",
                "detect.learning: must be at most 30 days",
            ),
            (
                "[detect]\ndefend_budget_share = 0\n",
                "detect.defend_budget_share: must be above 0",
            ),
            (
                "[detect]\nfloors = { syns = -1 }\n",
                "detect.floors.syns: must be 0 or more",
            ),
            (
                "[detect]\nfloors = { drop_share = 2000 }\n",
                "detect.floors.drop_share: must be 0 to 1000",
            ),
            ("[detect]\nsensitivity = 3\n", "unknown field `sensitivity`"),
            (
                "[[policy]]\nname = \"web\"\npps = 10\ndetect = \"panic\"\n",
                "unknown variant `panic`",
            ),
        ] {
            let e = parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let v = parse(
            "[detect]\nthreshold = 8.0\nfloors = { syns = 50 }\n\n[[policy]]\nname = \"web\"\nprotocol = \"tcp\"\nports = [\"8000-8099\"]\npps = 10\ndetect = \"alert\"\n\n[[policy]]\nname = \"dns\"\nprotocol = \"udp\"\npps = 10\n",
            "f.toml",
        )
        .unwrap();
        let s = v.config.detect.settings();
        assert_eq!((s.threshold, s.floors[2], s.floors[0]), (8.0, 50.0, 1000.0));
        let web = v.config.policies[0].get_ref().to_abi()[0];
        let dns = v.config.policies[1].get_ref().to_abi()[0];
        assert_ne!(
            web.flags & rampart_common::abi::policy_flag::OBSERVE,
            0,
            "alert by default"
        );
        assert_eq!(dns.flags & rampart_common::abi::policy_flag::OBSERVE, 0);
        // 100 ports in at most 16 runs: runs of 8.
        assert_eq!(web.port_shift, 3);
    }

    #[test]
    fn wrong_types_and_values_are_reported() {
        for (text, needle) in [
            (
                "[agent]\nattach_mode = \"turbo\"\n",
                "unknown variant `turbo`",
            ),
            ("[metrics]\nlisten = \"nope\"\n", "metrics.listen"),
            ("[control]\nsocket_mode = \"0666\"\n", "control.socket_mode"),
            ("[capacity]\nblock_v4 = 0\n", "capacity.block_v4"),
            (
                "[[policy]]\nname = \"a\"\npps = 10\n[[policy]]\nname = \"a\"\npps = 10\n",
                "names must be unique",
            ),
            (
                "[[policy]]\nname = \"a\"\npps = 10\nports = [\"90-80\"]\n",
                "reversed",
            ),
        ] {
            let e = parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// Every key and section the config knows, to steer random text
        /// into the validator rather than only the TOML parser.
        const WORDS: &[&str] = &[
            "[agent]",
            "[control]",
            "[metrics]",
            "[events]",
            "[capacity]",
            "[protected]",
            "[allowlist]",
            "[blocklist]",
            "[[policy]]",
            "[[feed]]",
            "[crowdsec]",
            "interfaces",
            "dry_run",
            "malformed",
            "state_dir",
            "listen",
            "socket_mode",
            "sample_every",
            "block_v4",
            "rate_sets",
            "ranges",
            "entries",
            "name",
            "protocol",
            "ports",
            "pps",
            "burst",
            "bps",
            "ipv4_prefix",
            "ban_threshold",
            "ban_time",
            "source",
            "format",
            "refresh",
            "max_bytes",
            "url",
            "api_key_file",
            "poll",
            "=",
            "\"",
            "[",
            "]",
            ",",
            "\n",
            " ",
            "0",
            "1",
            "-1",
            "65536",
            "99999999999999999999",
            "\"10.0.0.0/8\"",
            "\"1h\"",
            "\"tcp\"",
            "\"/x\"",
            "\"http://h\"",
            "true",
            "\"443-80\"",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(3000)))]
            /// Any text: a config or errors with a line, never a panic.
            #[test]
            fn any_text_gives_a_config_or_errors(text in "(?s).{0,300}") {
                if let Err(e) = parse(&text, "f.toml") {
                    prop_assert!(!e.0.is_empty());
                }
            }

            #[test]
            fn config_shaped_text_gives_a_config_or_errors(
                words in proptest::collection::vec(proptest::sample::select(WORDS), 0..80)
            ) {
                let text: String = words.concat();
                if let Err(e) = parse(&text, "f.toml") {
                    prop_assert!(e.0.iter().all(|x| !x.message.is_empty()));
                }
            }

            /// The embedded default with random edits.
            #[test]
            fn mutated_defaults_give_a_config_or_errors(
                edits in proptest::collection::vec((any::<usize>(), any::<char>(), 0u8..3), 1..8)
            ) {
                let mut text: Vec<char> = EMBEDDED_DEFAULT.chars().collect();
                for (at, c, op) in edits {
                    let i = at % (text.len() + 1);
                    match op {
                        0 => text.insert(i, c),
                        1 if i < text.len() => { text.remove(i); }
                        _ if i < text.len() => text[i] = c,
                        _ => {}
                    }
                }
                let text: String = text.into_iter().collect();
                let _ = parse(&text, "f.toml");
            }
        }
    }
}
