//! Prometheus metrics. Kernel counters are per-CPU maps, summed over CPUs at
//! scrape time and mirrored into standard counters by their increase. No
//! label carries an address: cardinality is bounded by interfaces, actions,
//! reasons, maps and policies.
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rampart_common::abi::stat;

use crate::state::Core;

pub struct Metrics {
    registry: Registry,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    list_entries: IntGaugeVec,
    bans_active: IntGauge,
    bans_started: IntCounter,
    ban_table_full: IntCounter,
    bans_spared: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    rate_evictions: IntCounter,
    rate_overflow: IntCounter,
    events_sent: IntCounter,
    events_lost: IntCounter,
    samples_capped: IntCounter,
    reloads: IntCounterVec,
    last_reload_success: Gauge,
    last_reload_ok: IntGauge,
    attached: IntGaugeVec,
    pub control_requests: IntCounterVec,
    refused: IntCounter,
    dry_run: IntGauge,
    pub state_write_errors: IntCounter,
    pub bans_logged_suppressed: IntCounter,
    feed_entries: IntGaugeVec,
    feed_skipped: IntGaugeVec,
    feed_last_success: IntGaugeVec,
    feed_refreshes: IntCounterVec,
    crowdsec_active: IntGauge,
    crowdsec_last_success: IntGauge,
    crowdsec_polls: IntCounterVec,
    crowdsec_decisions: IntCounterVec,
    crowdsec_received: IntCounterVec,
    share_pushes: IntCounterVec,
    share_requests: IntCounter,
    share_decisions: IntCounter,
    share_queue: IntGauge,
    share_overflowed: IntCounter,
    syn_cookies_available: IntGauge,
    syn_cookies_engaged: IntGaugeVec,
    cookies_valid: IntCounter,
    cookie_fallback: IntCounter,
    verified_by_connection: IntCounter,
    verified_sources: IntGauge,
    pub connections_refused: IntCounterVec,
    detector_value: prometheus::GaugeVec,
    detector_baseline: prometheus::GaugeVec,
    detector_score: prometheus::GaugeVec,
    detector_learning: IntGaugeVec,
    anomaly_active: IntGaugeVec,
    anomalies: IntCounterVec,
    detector_busy: prometheus::Counter,
    /// The newest anomaly already counted, by id; None until the first
    /// reading (anomalies from before a restart are not counted again).
    anomalies_seen: std::sync::Mutex<Option<u64>>,
    /// The last rendered scrape and when: a scrape flood renders once a
    /// second at most.
    snapshot: std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<String>)>>,
    /// One render at a time; other scrapes wait and take its result.
    rendering: tokio::sync::Mutex<()>,
}

/// How old a served scrape may be.
pub const SNAPSHOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g =
        prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

/// Raises a counter to `value` (kernel counters only grow).
fn mirror(c: &IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let build = gauge_vec(
            &r,
            "rampart_build_info",
            "Build information; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let last = Gauge::new(
            "rampart_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )
        .expect("valid metric definition");
        r.register(Box::new(last.clone()))
            .expect("unique metric name");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector registers once");
        let m = Self {
            packets: counter_vec(
                &r,
                "rampart_packets_total",
                "Packets seen by the XDP program, by interface, action and reason.",
                &["interface", "action", "reason"],
            ),
            bytes: counter_vec(
                &r,
                "rampart_bytes_total",
                "Bytes seen by the XDP program, by interface, action and reason.",
                &["interface", "action", "reason"],
            ),
            list_entries: gauge_vec(
                &r,
                "rampart_list_entries",
                "Allowlist and blocklist entries by list, address family and origin.",
                &["list", "family", "origin"],
            ),
            bans_active: gauge(
                &r,
                "rampart_bans_active",
                "Sources currently banned by the data plane.",
            ),
            bans_started: counter(
                &r,
                "rampart_bans_started_total",
                "Bans started by the data plane.",
            ),
            ban_table_full: counter(
                &r,
                "rampart_ban_table_full_total",
                "Bans not recorded because the ban table was full (the source stays rate-limited).",
            ),
            bans_spared: counter_vec(
                &r,
                "rampart_bans_spared_total",
                "Bans not started though due: the source is in [bans] exempt, or verified. It stays rate-limited.",
                &["reason"],
            ),
            map_entries: gauge_vec(
                &r,
                "rampart_map_entries",
                "Entries in each BPF table.",
                &["map"],
            ),
            map_capacity: gauge_vec(
                &r,
                "rampart_map_capacity",
                "Capacity of each BPF table.",
                &["map"],
            ),
            rate_evictions: counter(
                &r,
                "rampart_ratelimit_evictions_total",
                "Idle rate-limit slots given to new sources.",
            ),
            rate_overflow: counter(
                &r,
                "rampart_ratelimit_overflow_total",
                "Packets of new sources metered by a shared overflow bucket because every slot of their set was active.",
            ),
            events_sent: counter(
                &r,
                "rampart_events_sampled_total",
                "Drop samples and ban events written to the event ring buffer.",
            ),
            events_lost: counter(
                &r,
                "rampart_events_lost_total",
                "Events lost because the ring buffer was full.",
            ),
            samples_capped: counter(
                &r,
                "rampart_events_capped_total",
                "Drop samples skipped by the per-second cap.",
            ),
            reloads: counter_vec(
                &r,
                "rampart_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            last_reload_success: last,
            last_reload_ok: gauge(
                &r,
                "rampart_config_last_reload_successful",
                "1 if the last configuration reload succeeded, 0 if it was refused.",
            ),
            attached: gauge_vec(
                &r,
                "rampart_interface_attached",
                "1 when the program is attached to the interface, by attach mode.",
                &["interface", "mode"],
            ),
            control_requests: counter_vec(
                &r,
                "rampart_control_requests_total",
                "Control API requests by endpoint and HTTP status.",
                &["endpoint", "status"],
            ),
            refused: counter(
                &r,
                "rampart_protected_refusals_total",
                "Blocks refused because they covered a protected address.",
            ),
            dry_run: gauge(&r, "rampart_dry_run", "1 while global dry-run is on."),
            state_write_errors: counter(
                &r,
                "rampart_state_write_errors_total",
                "Failed writes of the state file.",
            ),
            bans_logged_suppressed: counter(
                &r,
                "rampart_ban_logs_suppressed_total",
                "Ban log lines suppressed by the log rate limit.",
            ),
            feed_entries: gauge_vec(
                &r,
                "rampart_feed_entries",
                "Entries each feed holds in the lists.",
                &["feed", "list"],
            ),
            feed_skipped: gauge_vec(
                &r,
                "rampart_feed_skipped_entries",
                "Entries of each feed's current version not applied, by reason (protected, allowlisted, invalid).",
                &["feed", "reason"],
            ),
            feed_last_success: gauge_vec(
                &r,
                "rampart_feed_last_success_timestamp_seconds",
                "Unix time of each feed's last successful refresh.",
                &["feed"],
            ),
            feed_refreshes: counter_vec(
                &r,
                "rampart_feed_refreshes_total",
                "Feed refreshes by feed and result (a failure keeps the last good version).",
                &["feed", "result"],
            ),
            crowdsec_active: gauge(
                &r,
                "rampart_crowdsec_decisions_active",
                "CrowdSec decisions in force as blocklist entries.",
            ),
            crowdsec_last_success: gauge(
                &r,
                "rampart_crowdsec_last_success_timestamp_seconds",
                "Unix time of the last successful poll of the CrowdSec decision stream.",
            ),
            crowdsec_polls: counter_vec(
                &r,
                "rampart_crowdsec_polls_total",
                "Polls of the CrowdSec decision stream by result.",
                &["result"],
            ),
            crowdsec_decisions: counter_vec(
                &r,
                "rampart_crowdsec_decisions_total",
                "CrowdSec decisions by what was done with them (added, deleted, skipped_protected, ignored).",
                &["outcome"],
            ),
            crowdsec_received: counter_vec(
                &r,
                "rampart_crowdsec_shared_received_total",
                "Decisions shared by Rampart nodes seen in the stream: from other nodes (applied as blocks) or this node's own (left alone).",
                &["from"],
            ),
            share_pushes: counter_vec(
                &r,
                "rampart_crowdsec_share_pushes_total",
                "Pushes of this node's decisions to the CrowdSec local API, by result (a failed push stays queued).",
                &["result"],
            ),
            share_requests: counter(
                &r,
                "rampart_crowdsec_share_requests_total",
                "HTTP requests made to the local API for sharing, logins included.",
            ),
            share_decisions: counter(
                &r,
                "rampart_crowdsec_share_decisions_total",
                "Decisions the local API took from this node.",
            ),
            share_queue: gauge(
                &r,
                "rampart_crowdsec_share_queue_length",
                "Decisions waiting for the local API.",
            ),
            share_overflowed: counter(
                &r,
                "rampart_crowdsec_share_overflowed_total",
                "Decisions pushed out of a full share queue, never sent.",
            ),
            syn_cookies_available: gauge(
                &r,
                "rampart_syn_cookies_available",
                "0 when a policy asks for SYN cookies and the host cannot issue them (see rampart status).",
            ),
            syn_cookies_engaged: gauge_vec(
                &r,
                "rampart_syn_cookies_engaged",
                "1 while a policy answers SYNs from unverified sources with SYN cookies.",
                &["policy"],
            ),
            cookies_valid: counter(
                &r,
                "rampart_syn_cookie_valid_acks_total",
                "ACKs whose SYN cookie the kernel accepted; each verifies its source. Cookies sent and bad ACKs dropped are rampart_packets_total with reason syn_cookie and bad_cookie.",
            ),
            cookie_fallback: counter(
                &r,
                "rampart_syn_cookie_fallbacks_total",
                "SYNs cookie mode could not answer (no listener in the agent's network namespace) and passed on, metered.",
            ),
            verified_by_connection: counter(
                &r,
                "rampart_sources_verified_by_connection_total",
                "Sources verified because they had an established connection when cookie mode engaged.",
            ),
            verified_sources: gauge(
                &r,
                "rampart_verified_sources",
                "Sources that proved they can receive (valid SYN cookie or established connection), not yet expired.",
            ),
            connections_refused: counter_vec(
                &r,
                "rampart_connections_refused_total",
                "Connections closed on accept because the listener's connection cap was reached, by listener.",
                &["listener"],
            ),
            detector_value: float_gauge_vec(
                &r,
                "rampart_detector_value",
                "The traffic detector's latest value of each feature, per policy (per second; drop_share per thousand packets).",
                &["policy", "feature"],
            ),
            detector_baseline: float_gauge_vec(
                &r,
                "rampart_detector_baseline",
                "The learnt baseline (exponentially weighted mean) of each feature, per policy.",
                &["policy", "feature"],
            ),
            detector_score: float_gauge_vec(
                &r,
                "rampart_detector_score",
                "Deviations above its baseline of each feature's latest value, per policy.",
                &["policy", "feature"],
            ),
            detector_learning: gauge_vec(
                &r,
                "rampart_detector_learning",
                "1 while a policy's detector is in its learning period (nothing fires).",
                &["policy"],
            ),
            anomaly_active: gauge_vec(
                &r,
                "rampart_anomaly_active",
                "1 while a traffic anomaly is active on a policy (or a run of its ports), by the action taken.",
                &["policy", "action"],
            ),
            anomalies: counter_vec(
                &r,
                "rampart_anomalies_total",
                "Traffic anomalies started, per policy and action (alert, defend, \"defend (dry-run)\").",
                &["policy", "action"],
            ),
            detector_busy: {
                let c = prometheus::Counter::new(
                    "rampart_detector_busy_seconds_total",
                    "Time the agent spent running the traffic detectors.",
                )
                .expect("valid metric definition");
                r.register(Box::new(c.clone())).expect("unique metric name");
                c
            },
            anomalies_seen: std::sync::Mutex::new(None),
            snapshot: std::sync::Mutex::new(None),
            rendering: tokio::sync::Mutex::new(()),
            registry: r,
        };
        for listener in ["metrics", "control"] {
            let _ = m.connections_refused.with_label_values(&[listener]);
        }
        // Both results exist from the start, so alerts can rate() them.
        for result in ["success", "failure"] {
            let _ = m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// The traffic detectors' state, after each of their ticks.
    pub fn set_detector(
        &self,
        views: &[crate::api::DetectorView],
        anomalies: &[crate::api::AnomalyRow],
        busy_ns: u64,
    ) {
        for g in [
            &self.detector_value,
            &self.detector_baseline,
            &self.detector_score,
        ] {
            g.reset();
        }
        self.detector_learning.reset();
        for v in views {
            self.detector_learning
                .with_label_values(&[&v.policy])
                .set(i64::from(v.learning));
            for f in &v.features {
                let l = [v.policy.as_str(), f.feature.as_str()];
                self.detector_value.with_label_values(&l).set(f.value);
                self.detector_baseline.with_label_values(&l).set(f.baseline);
                self.detector_score.with_label_values(&l).set(f.score);
            }
        }
        self.anomaly_active.reset();
        for v in views {
            // Every series exists from the start, so alerts can rate() them.
            for action in ["alert", "defend", "defend (dry-run)"] {
                let _ = self.anomaly_active.with_label_values(&[&v.policy, action]);
                let _ = self.anomalies.with_label_values(&[&v.policy, action]);
            }
        }
        let mut seen = crate::sync::lock(&self.anomalies_seen);
        let newest = anomalies.iter().map(|a| a.id).max().unwrap_or(0);
        let counted = *seen.get_or_insert(newest);
        for a in anomalies {
            if a.active {
                self.anomaly_active
                    .with_label_values(&[&a.policy, &a.action])
                    .set(1);
            }
            if a.id > counted {
                self.anomalies
                    .with_label_values(&[&a.policy, &a.action])
                    .inc();
            }
        }
        *seen = Some(counted.max(newest));
        let busy = busy_ns as f64 / 1e9;
        let cur = self.detector_busy.get();
        if busy > cur {
            self.detector_busy.inc_by(busy - cur);
        }
    }

    /// Counts a configuration load (start-up or reload) and its result.
    pub fn record_reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload_success
                .set(crate::clock::unix_now() as f64);
        }
    }

    pub fn feed_refreshed(&self, feed: &str, ok: bool) {
        self.feed_refreshes
            .with_label_values(&[feed, if ok { "success" } else { "failure" }])
            .inc();
        // The other result exists too, so alerts can rate() it.
        let _ = self
            .feed_refreshes
            .with_label_values(&[feed, if ok { "failure" } else { "success" }]);
    }

    pub fn forget_feed(&self, feed: &str) {
        for result in ["success", "failure"] {
            let _ = self.feed_refreshes.remove_label_values(&[feed, result]);
        }
    }

    pub fn crowdsec_polled(&self, ok: bool) {
        self.crowdsec_polls
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Feed and CrowdSec figures, refreshed at scrape time.
    pub fn set_sources(
        &self,
        feeds: &[crate::api::FeedStatus],
        crowdsec: Option<&crate::api::CrowdsecStatus>,
    ) {
        self.feed_entries.reset();
        self.feed_skipped.reset();
        self.feed_last_success.reset();
        for f in feeds {
            self.feed_entries
                .with_label_values(&[&f.name, &f.action])
                .set(f.entries as i64);
            for (reason, n) in [
                ("protected", f.skipped_protected),
                ("allowlisted", f.skipped_allowlisted),
                ("invalid", f.skipped_invalid),
            ] {
                self.feed_skipped
                    .with_label_values(&[&f.name, reason])
                    .set(n as i64);
            }
            self.feed_last_success
                .with_label_values(&[&f.name])
                .set(f.last_success as i64);
        }
        if let Some(c) = crowdsec {
            self.crowdsec_active.set(c.active as i64);
            self.crowdsec_last_success.set(c.last_success as i64);
            for (outcome, n) in [
                ("added", c.added_total),
                ("deleted", c.deleted_total),
                ("skipped_protected", c.skipped_protected_total),
                ("ignored", c.ignored_total),
            ] {
                mirror(&self.crowdsec_decisions.with_label_values(&[outcome]), n);
            }
            mirror(
                &self.crowdsec_received.with_label_values(&["other_node"]),
                c.from_nodes_total,
            );
            mirror(
                &self.crowdsec_received.with_label_values(&["self"]),
                c.own_skipped_total,
            );
            if let Some(sh) = &c.share {
                mirror(
                    &self.share_pushes.with_label_values(&["success"]),
                    sh.pushes_ok,
                );
                mirror(
                    &self.share_pushes.with_label_values(&["failure"]),
                    sh.pushes_failed,
                );
                mirror(&self.share_requests, sh.requests_total);
                mirror(&self.share_decisions, sh.pushed_total);
                mirror(&self.share_overflowed, sh.overflowed_total);
                self.share_queue.set(sh.queued as i64);
            }
        }
    }

    /// Reads the kernel state and renders the text exposition format.
    /// The scrape text: the snapshot while it is fresh, else a new render by
    /// `render` (run off the async workers by the caller's closure).
    pub async fn scrape<F>(&self, render: F) -> std::sync::Arc<String>
    where
        F: FnOnce() -> String + Send + 'static,
    {
        let fresh = |m: &Self| {
            crate::sync::lock(&m.snapshot)
                .as_ref()
                .filter(|(at, _)| at.elapsed() < SNAPSHOT_MAX_AGE)
                .map(|(_, t)| t.clone())
        };
        if let Some(t) = fresh(self) {
            return t;
        }
        let _one = self.rendering.lock().await;
        // A scrape that waited here takes the render it waited for.
        if let Some(t) = fresh(self) {
            return t;
        }
        let text = std::sync::Arc::new(
            tokio::task::spawn_blocking(render)
                .await
                .unwrap_or_default(),
        );
        *crate::sync::lock(&self.snapshot) = Some((std::time::Instant::now(), text.clone()));
        text
    }

    pub fn render(
        &self,
        core: &Core,
        slots: &[(u32, String)],
        ifaces: &[crate::api::IfaceStatus],
    ) -> String {
        self.refresh(core, slots, ifaces);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn refresh(&self, core: &Core, slots: &[(u32, String)], ifaces: &[crate::api::IfaceStatus]) {
        if let Ok(rows) = core.counter_rows(slots) {
            // The shared slot's zero rows are left out: no series for an
            // interface that never saw a packet of that kind.
            for (_, row) in rows.iter().filter(|(slot, r)| *slot != 0 || r.packets != 0) {
                let labels = [
                    row.interface.as_str(),
                    row.action.as_str(),
                    row.reason.as_str(),
                ];
                mirror(&self.packets.with_label_values(&labels), row.packets);
                mirror(&self.bytes.with_label_values(&labels), row.bytes);
            }
        }
        if let Ok(s) = core.dp.stats() {
            mirror(&self.bans_started, s[stat::BANS_STARTED as usize]);
            mirror(&self.ban_table_full, s[stat::BAN_TABLE_FULL as usize]);
            mirror(
                &self.bans_spared.with_label_values(&["exempt"]),
                s[stat::BAN_EXEMPT as usize],
            );
            mirror(
                &self.bans_spared.with_label_values(&["verified"]),
                s[stat::BAN_SPARED_VERIFIED as usize],
            );
            mirror(&self.rate_evictions, s[stat::RATE_EVICTIONS as usize]);
            mirror(&self.rate_overflow, s[stat::RATE_OVERFLOW as usize]);
            mirror(&self.events_sent, s[stat::EVENTS_SENT as usize]);
            mirror(&self.events_lost, s[stat::EVENTS_LOST as usize]);
            mirror(&self.samples_capped, s[stat::SAMPLES_CAPPED as usize]);
            mirror(&self.cookies_valid, s[stat::COOKIES_VALID as usize]);
            mirror(&self.cookie_fallback, s[stat::COOKIE_FALLBACK as usize]);
            mirror(
                &self.verified_by_connection,
                s[stat::VERIFIED_BY_SOCKET as usize],
            );
        }
        self.syn_cookies_available
            .set(i64::from(core.syn_cookies.available()));
        self.verified_sources.set(core.verified_sources as i64);
        self.syn_cookies_engaged.reset();
        for p in core.flood_policies() {
            if p.syn_cookies != "off" {
                self.syn_cookies_engaged
                    .with_label_values(&[&p.name])
                    .set(i64::from(p.engaged));
            }
        }
        mirror(&self.refused, core.refused_total);
        self.list_entries.reset();
        for ((kind, fam, origin), n) in core.entry_counts().clone() {
            self.list_entries
                .with_label_values(&[kind.name(), fam, origin.label()])
                .set(n as i64);
        }
        let now = crate::clock::mono_ns();
        let bans = core.dp.bans().unwrap_or_default();
        self.bans_active
            .set(bans.iter().filter(|(_, b)| b.expires_ns > now).count() as i64);
        for t in core.table_fill(&bans) {
            self.map_entries
                .with_label_values(&[&t.table])
                .set(t.entries as i64);
            self.map_capacity
                .with_label_values(&[&t.table])
                .set(t.capacity as i64);
        }
        self.dry_run.set(i64::from(core.cfg.config.agent.dry_run));
        self.attached.reset();
        for i in ifaces {
            self.attached
                .with_label_values(&[&i.name, &i.mode])
                .set(i64::from(i.attached));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
