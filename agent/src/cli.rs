//! The `rampart` command line: the agent daemon and the commands that talk
//! to it. Verbs on nouns; tables for people (`-o table`), JSON for scripts
//! (`-o json`, stable, `[]` when empty). Exit codes: 0 success, 1 error,
//! 2 usage error.
use std::{io::IsTerminal, net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    api::{
        self, AddRequest, BansDelRequest, Changed, CrowdsecStatus, DelRequest, Explain, FeedStatus,
        MAX_TTL, StatRow, Status, TopRow,
    },
    client::Client,
    clock,
    config::{self, LogFormat},
    prefix::Prefix,
};

#[derive(Parser)]
#[command(name = "rampart", version, about = "XDP traffic filter for API hosts")]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, default_value = "/run/rampart/rampart.sock")]
    pub socket: PathBuf,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (the daemon that owns the data plane).
    Agent(AgentArgs),
    /// Remove the program from every interface and delete its pins.
    Detach {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Version, uptime, interfaces, table fill, last reload.
    Status,
    /// Blocklist entries.
    #[command(subcommand)]
    Block(ListCmd),
    /// Allowlist entries.
    #[command(subcommand)]
    Allow(ListCmd),
    /// Sources banned by the data plane.
    #[command(subcommand)]
    Bans(BansCmd),
    /// Packets and bytes by interface, action and reason.
    Stats {
        /// Refresh every second with rates.
        #[arg(long)]
        watch: bool,
    },
    /// Top sources by dropped packets (from sampled drops).
    Top {
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
    },
    /// What the data plane would do with a packet from IP now, and why.
    Explain {
        ip: IpAddr,
        #[arg(long, value_parser = ["tcp", "udp", "icmp"], default_value = "tcp")]
        proto: String,
        #[arg(long, default_value_t = 443)]
        port: u16,
    },
    /// Traffic anomalies the detector found, current and past, with the
    /// features and scores that fired them.
    Anomalies,
    /// Re-read and apply the config file (invalid: nothing changes).
    Reload,
    /// Threat feeds and the CrowdSec bouncer.
    #[command(subcommand)]
    Feeds(FeedsCmd),
}

#[derive(Subcommand)]
pub enum FeedsCmd {
    /// Every feed: entries, skipped entries, last success, last error.
    List,
    /// Fetch and apply a feed now (all feeds without NAME). Exits 1 if a
    /// refresh failed; the feed then keeps its last good version.
    Refresh { name: Option<String> },
}

#[derive(Args)]
pub struct AgentArgs {
    /// The config file (default /etc/rampart/rampart.toml; only when that
    /// default is absent does the embedded default run).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Validate FILE and exit (0: valid).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Recreate the maps (to apply new [capacity] sizes); runtime entries and
    /// bans are restored from the state file.
    #[arg(long)]
    pub replace_maps: bool,
    /// Serve metrics on ADDR (ip:port) instead of `[metrics] listen`: for
    /// an address known only at start, such as a Kubernetes node's IP.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum ListCmd {
    /// Add entries (addresses or CIDR prefixes).
    Add {
        #[arg(required = true, value_parser = parse_prefix)]
        prefixes: Vec<Prefix>,
        /// How long the entries last (e.g. 30m, 12h, 7d); default forever.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        #[arg(long)]
        reason: Option<String>,
        /// Allowlist: accept entries broader than [guards] permits (audited).
        #[arg(long)]
        force: bool,
        /// Blocklist: also report the block to the CrowdSec local API, so
        /// every node enforces it (`[crowdsec] share = true`); `del` lifts it
        /// everywhere.
        #[arg(long)]
        share: bool,
    },
    /// Remove entries added at runtime.
    Del {
        #[arg(required = true, value_parser = parse_prefix)]
        prefixes: Vec<Prefix>,
    },
    /// List entries, with origin and expiry.
    List {
        /// Only entries that contain this address.
        #[arg(long = "match")]
        matching: Option<IpAddr>,
    },
    /// Add every entry of FILE (one per line; '#' and ';' start comments).
    Import {
        file: PathBuf,
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        #[arg(long)]
        reason: Option<String>,
        /// Apply the valid lines even if some are invalid.
        #[arg(long)]
        skip_invalid: bool,
        /// Allowlist: accept entries broader than [guards] permits (audited).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum BansCmd {
    List,
    /// Lift bans.
    Del {
        #[arg(value_parser = parse_prefix, required_unless_present = "all", conflicts_with = "all")]
        prefixes: Vec<Prefix>,
        #[arg(long)]
        all: bool,
    },
}

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse()
        .map_err(|e: crate::prefix::PrefixError| e.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 90s, 30m, 12h or 7d"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("'{s}': a TTL must be at least 1s"));
    }
    if d > MAX_TTL {
        return Err(format!(
            "'{s}': a TTL can be at most 10 years (omit --ttl for no expiry)"
        ));
    }
    Ok(d)
}

/// Runs a client command; the error is the message to print.
pub async fn run(cli: Cli) -> Result<(), String> {
    let c = Client::new(cli.socket.clone());
    let out = cli.output;
    let e = |e: crate::client::ClientError| e.to_string();
    match cli.command {
        Command::Agent(_) | Command::Detach { .. } => Err("internal: not a client command".into()),
        Command::Status => {
            let s: Status = c.get("/v1/status").await.map_err(e)?;
            print_status(out, &s);
            Ok(())
        }
        Command::Block(cmd) => list_cmd(&c, out, "block", cmd).await,
        Command::Allow(cmd) => list_cmd(&c, out, "allow", cmd).await,
        Command::Bans(BansCmd::List) => {
            let b: api::Bans = c.get("/v1/bans").await.map_err(e)?;
            emit(out, &b, || {
                table(
                    &["SOURCE", "ACTIVE", "ENDS IN", "OFFENCES", "POLICY"],
                    b.iter()
                        .map(|r| {
                            vec![
                                r.prefix.to_string(),
                                r.active.to_string(),
                                until(Some(r.expires)),
                                r.offences.to_string(),
                                r.policy.clone(),
                            ]
                        })
                        .collect(),
                )
            });
            Ok(())
        }
        Command::Bans(BansCmd::Del { prefixes, all }) => {
            let r: Changed = c
                .post("/v1/bans/del", &BansDelRequest { prefixes, all })
                .await
                .map_err(e)?;
            emit(out, &r, || format!("lifted {} ban(s)\n", r.changed));
            Ok(())
        }
        Command::Stats { watch } => stats(&c, out, watch).await,
        Command::Top { n } => {
            let t: Vec<TopRow> = c.get(&format!("/v1/top?n={n}")).await.map_err(e)?;
            emit(out, &t, || {
                table(
                    &["SOURCE", "DROPPED (EST.)", "REASON"],
                    t.iter()
                        .map(|r| vec![r.source.clone(), r.dropped.to_string(), r.reason.clone()])
                        .collect(),
                )
            });
            Ok(())
        }
        Command::Explain { ip, proto, port } => {
            let x: Explain = c
                .get(&format!("/v1/explain?ip={ip}&proto={proto}&port={port}"))
                .await
                .map_err(e)?;
            emit(out, &x, || {
                let mut s = format!(
                    "{} {}/{} -> {} ({})\n",
                    x.ip, x.protocol, x.port, x.action, x.reason
                );
                for b in &x.because {
                    s.push_str(&format!("  because {b}\n"));
                }
                if let Some(d) = &x.detector {
                    s.push_str(&detector_text(d));
                }
                s
            });
            Ok(())
        }
        Command::Anomalies => {
            let rows: Vec<api::AnomalyRow> = c.get("/v1/anomalies").await.map_err(e)?;
            emit(out, &rows, || anomalies_table(&rows));
            Ok(())
        }
        Command::Feeds(FeedsCmd::List) => {
            let v: api::FeedsView = c.get("/v1/feeds").await.map_err(e)?;
            emit(out, &v, || feeds_table(&v.feeds, v.crowdsec.as_ref()));
            Ok(())
        }
        Command::Feeds(FeedsCmd::Refresh { name }) => {
            let r: Vec<FeedStatus> = c
                .post("/v1/feeds/refresh", &api::RefreshRequest { name })
                .await
                .map_err(e)?;
            emit(out, &r, || feeds_table(&r, None));
            let failed: Vec<String> = r
                .iter()
                .filter_map(|f| f.last_error.as_ref().map(|e| format!("{}: {e}", f.name)))
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "refresh failed (the last good version stays): {}",
                    failed.join("; ")
                ))
            }
        }
        Command::Reload => {
            let r: Changed = c
                .post("/v1/reload", &serde_json::json!({}))
                .await
                .map_err(e)?;
            emit(out, &r, || "configuration reloaded\n".into());
            Ok(())
        }
    }
}

async fn list_cmd(c: &Client, out: Output, list: &str, cmd: ListCmd) -> Result<(), String> {
    let e = |e: crate::client::ClientError| e.to_string();
    match cmd {
        ListCmd::Add {
            prefixes,
            ttl,
            reason,
            force,
            share,
        } => {
            let req = AddRequest {
                prefixes,
                ttl_secs: ttl.map(|d| d.as_secs()),
                reason,
                force,
                share,
            };
            let r: Changed = c
                .post(&format!("/v1/lists/{list}/add"), &req)
                .await
                .map_err(e)?;
            emit(out, &r, || {
                format!(
                    "added {} entr{} to the {list}list\n",
                    r.changed,
                    if r.changed == 1 { "y" } else { "ies" }
                )
            });
        }
        ListCmd::Del { prefixes } => {
            let r: Changed = c
                .post(&format!("/v1/lists/{list}/del"), &DelRequest { prefixes })
                .await
                .map_err(e)?;
            emit(out, &r, || {
                format!(
                    "removed {} entr{} from the {list}list\n",
                    r.changed,
                    if r.changed == 1 { "y" } else { "ies" }
                )
            });
        }
        ListCmd::List { matching } => {
            let path = match matching {
                Some(ip) => format!("/v1/lists/{list}?match={ip}"),
                None => format!("/v1/lists/{list}"),
            };
            let rows: api::Entries = c.get(&path).await.map_err(e)?;
            emit(out, &rows, || {
                table(
                    &["PREFIX", "ORIGIN", "EXPIRES IN", "REASON"],
                    rows.iter()
                        .map(|r| {
                            vec![
                                r.prefix.to_string(),
                                r.origin.join(","),
                                until(r.expires),
                                r.reason.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        ListCmd::Import {
            file,
            ttl,
            reason,
            skip_invalid,
            force,
        } => {
            let (prefixes, errors) = read_list_file(&file)?;
            if !errors.is_empty() {
                for er in errors.iter().take(50) {
                    eprintln!("{er}");
                }
                if errors.len() > 50 {
                    eprintln!("... and {} more invalid lines", errors.len() - 50);
                }
                if !skip_invalid {
                    return Err(format!(
                        "{}: {} invalid line(s); nothing was imported (fix them, or pass --skip-invalid to import the {} valid ones)",
                        file.display(),
                        errors.len(),
                        prefixes.len()
                    ));
                }
            }
            let n = prefixes.len();
            if std::io::stderr().is_terminal() {
                eprintln!("applying {n} entries ...");
            }
            let req = AddRequest {
                prefixes,
                ttl_secs: ttl.map(|d| d.as_secs()),
                reason,
                force,
                share: false,
            };
            let r: Changed = c
                .post(&format!("/v1/lists/{list}/import"), &req)
                .await
                .map_err(e)?;
            emit(out, &r, || {
                format!(
                    "imported {} entries into the {list}list ({} invalid lines skipped)\n",
                    r.changed,
                    errors.len()
                )
            });
        }
    }
    Ok(())
}

/// Reads a list file: one prefix per line, comments after '#' or ';'.
/// Returns the prefixes and an error per invalid line ("FILE:LINE: ...").
pub fn read_list_file(file: &std::path::Path) -> Result<(Vec<Prefix>, Vec<String>), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let total = text.lines().count();
    let tty = std::io::stderr().is_terminal() && total > 100_000;
    let mut prefixes = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if tty && i % 50_000 == 0 {
            eprint!(
                "\rreading {}: {:>3}% ({i}/{total} lines)",
                file.display(),
                i * 100 / total.max(1)
            );
        }
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match content.parse::<Prefix>() {
            Ok(p) => prefixes.push(p),
            Err(e) => errors.push(format!("{}:{}: {e}", file.display(), i + 1)),
        }
    }
    if tty {
        eprintln!("\rreading {}: 100% ({total}/{total} lines)", file.display());
    }
    Ok((prefixes, errors))
}

async fn stats(c: &Client, out: Output, watch: bool) -> Result<(), String> {
    let mut prev: Option<(std::time::Instant, Vec<StatRow>)> = None;
    loop {
        let rows: Vec<StatRow> = c.get("/v1/stats").await.map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        if !watch {
            emit(out, &rows, || stat_table(&rows, None));
            return Ok(());
        }
        let rates = prev.as_ref().map(|(t, p)| {
            let secs = now.duration_since(*t).as_secs_f64().max(0.001);
            rows.iter()
                .map(|r| {
                    let before = p
                        .iter()
                        .find(|q| {
                            q.interface == r.interface
                                && q.action == r.action
                                && q.reason == r.reason
                        })
                        .map_or(0, |q| q.packets);
                    (r.packets.saturating_sub(before)) as f64 / secs
                })
                .collect::<Vec<f64>>()
        });
        if out == Output::Json {
            println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        } else {
            print!("\x1b[2J\x1b[H{}", stat_table(&rows, rates.as_deref()));
        }
        prev = Some((now, rows));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn stat_table(rows: &[StatRow], rates: Option<&[f64]>) -> String {
    let mut head = vec!["INTERFACE", "ACTION", "REASON", "PACKETS", "BYTES"];
    if rates.is_some() {
        head.push("PKT/S");
    }
    table(
        &head,
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v = vec![
                    r.interface.clone(),
                    r.action.clone(),
                    r.reason.clone(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ];
                if let Some(rt) = rates {
                    v.push(format!("{:.0}", rt.get(i).copied().unwrap_or(0.0)));
                }
                v
            })
            .collect(),
    )
}

fn ago(t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let now = clock::unix_now();
    format!(
        "{} ago",
        clock::human(Duration::from_secs(now.saturating_sub(t)))
    )
}

fn feeds_table(feeds: &[FeedStatus], crowdsec: Option<&CrowdsecStatus>) -> String {
    let mut rows: Vec<Vec<String>> = feeds
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.action.clone(),
                f.entries.to_string(),
                format!(
                    "{}/{}/{}",
                    f.skipped_protected, f.skipped_allowlisted, f.skipped_invalid
                ),
                ago(f.last_success),
                f.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if let Some(c) = crowdsec {
        rows.push(vec![
            "crowdsec".into(),
            "block".into(),
            c.active.to_string(),
            format!("{}/-/{}", c.skipped_protected_total, c.ignored_total),
            ago(c.last_success),
            c.last_error.clone().unwrap_or_default(),
        ]);
        if let Some(sh) = c.share.as_ref().filter(|s| s.enabled) {
            rows.push(vec![
                format!("crowdsec share ({})", sh.node),
                "push".into(),
                format!("{} queued", sh.queued),
                format!("{} overflowed", sh.overflowed_total),
                ago(sh.last_success),
                sh.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    table(
        &[
            "FEED",
            "ACTION",
            "ENTRIES",
            "SKIPPED (PROT/ALLOW/INVALID)",
            "LAST SUCCESS",
            "LAST ERROR",
        ],
        rows,
    )
}

fn until(expires: Option<u64>) -> String {
    match expires {
        None => "never".into(),
        Some(e) => {
            let now = clock::unix_now();
            if e <= now {
                "expired".into()
            } else {
                clock::human(Duration::from_secs(e - now))
            }
        }
    }
}

/// A policy's detector: its state, and each feature's value, baseline and score.
fn detector_text(d: &api::DetectorView) -> String {
    let state = if d.anomaly {
        "ANOMALY".to_string()
    } else if d.learning {
        format!(
            "learning ({} left)",
            clock::human(Duration::from_secs(d.learning_left_secs))
        )
    } else {
        "normal".to_string()
    };
    let mut t = format!("detector of policy {}: {state}\n", d.policy);
    t.push_str(&table(
        &["FEATURE", "NOW", "BASELINE", "DEVIATION", "SCORE"],
        d.features
            .iter()
            .map(|f| {
                vec![
                    f.feature.clone(),
                    format!("{:.1}", f.value),
                    format!("{:.1}", f.baseline),
                    format!("{:.1}", f.deviation),
                    format!("{:.1}", f.score),
                ]
            })
            .collect(),
    ));
    t
}

fn anomalies_table(rows: &[api::AnomalyRow]) -> String {
    if rows.is_empty() {
        return "no anomalies\n".into();
    }
    table(
        &[
            "ID", "POLICY", "PORTS", "ACTION", "STARTED", "ENDED", "PEAK", "FIRED BY",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.policy.clone(),
                    r.ports.clone().unwrap_or_else(|| "all".into()),
                    r.action.clone(),
                    unix_time(r.started),
                    r.ended.map_or_else(|| "active".into(), unix_time),
                    format!("{:.1}", r.peak_score),
                    r.fired
                        .iter()
                        .map(|f| {
                            format!(
                                "{} {:.0} vs {:.0} (score {:.1})",
                                f.feature, f.value, f.baseline, f.score
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ]
            })
            .collect(),
    )
}

/// Unix seconds as UTC time of day and date.
fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn print_status(out: Output, s: &Status) {
    emit(out, s, || {
        let mut t = format!(
            "rampart {}  up {}  config {}\ndry-run: {}\nlast reload: {}{}\n",
            s.version,
            clock::human(Duration::from_secs(s.uptime_secs)),
            s.config_file,
            if s.dry_run {
                "ON (nothing is dropped)"
            } else {
                "off"
            },
            s.reload.last_result,
            if s.reload.errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.reload.errors.join("; "))
            }
        );
        if let Some(e) = &s.state_error {
            t.push_str(&format!("state: {e}\n"));
        }
        t.push_str(&format!(
            "syn cookies: {}\nverified sources: {}\n",
            s.flood.syn_cookies, s.flood.verified_sources
        ));
        t.push('\n');
        t.push_str(&table(
            &["INTERFACE", "ATTACHED", "MODE", "PROGRAM", "ERROR"],
            s.interfaces
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.attached.to_string(),
                        i.mode.clone(),
                        i.program_id.map_or("-".into(), |p| p.to_string()),
                        i.error.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        ));
        t.push('\n');
        t.push_str(&table(
            &["TABLE", "ENTRIES", "CAPACITY", "FILL"],
            s.tables
                .iter()
                .map(|f| {
                    vec![
                        f.table.clone(),
                        f.entries.to_string(),
                        f.capacity.to_string(),
                        format!(
                            "{:.1}%",
                            f.entries as f64 * 100.0 / f.capacity.max(1) as f64
                        ),
                    ]
                })
                .collect(),
        ));
        if !s.flood.policies.is_empty() {
            t.push('\n');
            t.push_str(&flood_table(&s.flood.policies));
        }
        for d in &s.detector {
            t.push('\n');
            t.push_str(&detector_text(d));
        }
        t
    });
}

fn flood_table(policies: &[crate::api::FloodPolicy]) -> String {
    table(
        &[
            "POLICY",
            "SYN COOKIES",
            "ENGAGED",
            "SYN/S",
            "ENGAGE ABOVE",
            "NEW SOURCES/S",
        ],
        policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.syn_cookies.clone(),
                    if p.engaged { "yes" } else { "no" }.into(),
                    p.syns_last_second.to_string(),
                    if p.syn_cookies == "auto" {
                        p.syn_above.to_string()
                    } else {
                        "-".into()
                    },
                    if p.new_sources_pps == 0 {
                        "unlimited".into()
                    } else {
                        p.new_sources_pps.to_string()
                    },
                ]
            })
            .collect(),
    )
}

/// Prints JSON, or the table the closure renders.
fn emit<T: Serialize>(out: Output, value: &T, table: impl FnOnce() -> String) {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
        ),
        Output::Table => print!("{}", table()),
    }
}

/// A left-aligned text table.
pub fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(ToString::to_string).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> Self {
        match a {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}
