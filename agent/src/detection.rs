//! The traffic detector as the agent runs it: once per sketch epoch (about
//! a second) it reads what the program counted for each observed policy,
//! turns it into features, feeds each policy's detector (`anomaly`), and
//! acts on what starts and ends: a log line, an audit entry, the history
//! `rampart anomalies` shows, metrics, and under `detect = "defend"` the
//! policy's flood defence for the anomaly's duration.
//!
//! A detector watches each configured policy as a whole, and each port
//! slot of a policy that has more than one (`abi::PORT_SLOTS` per port
//! range), so a flood aimed at one port of many is seen too.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::Path,
};

use rampart_common::{
    abi::{MAX_POLICIES, PORT_SLOTS, Policy, PolicyStats, SKETCH_EPOCH_SHIFT, Sketch, policy_flag},
    sketch,
};
use serde::{Deserialize, Serialize};

use crate::{
    anomaly::{Change, Detector, FEATURES, Fired, Sample, Settings},
    api::{AnomalyRow, DetectorView, FeatureView},
    clock,
    policy::Detect,
};

/// The detectors' file in the state directory.
pub const FILE: &str = "detector.json";

/// One watched series: a policy, or a run of its ports.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Watch {
    policy: String,
    /// A run of ports, or the whole policy.
    ports: Option<(u16, u16)>,
    detector: Detector,
    /// The latest sample, for `explain`, `status` and metrics.
    #[serde(skip)]
    last: Sample,
}

impl Watch {
    fn new(policy: &str, ports: Option<(u16, u16)>) -> Self {
        Self {
            policy: policy.to_string(),
            ports,
            detector: Detector::default(),
            last: [0.0; FEATURES.len()],
        }
    }
}

/// An anomaly as the history keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: u64,
    policy: String,
    ports: Option<(u16, u16)>,
    /// What was done: alert, defend, or defend under dry-run.
    action: String,
    started: u64,
    ended: Option<u64>,
    fired: Vec<Fired>,
    peak_score: f64,
}

/// What is persisted.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    watches: BTreeMap<String, Watch>,
    history: VecDeque<Record>,
    next_id: u64,
}

/// A policy group's counts for one epoch: the whole, and each port run
/// (or the whole again, for a policy without ports).
type Group = (PolicyStats, Vec<(Option<(u16, u16)>, PolicyStats)>);

/// One reading of the program's counters.
struct Reading {
    epoch: u64,
    /// The policy entries it was read under: a change of config restarts
    /// the differences.
    entries: Vec<(String, u16, u16)>,
    stats: Vec<PolicyStats>,
}

/// A policy's entries and settings as the detector needs them, read from
/// the core under its lock.
pub struct Snapshot {
    pub policies: Vec<Policy>,
    pub names: Vec<String>,
    pub stats: Vec<PolicyStats>,
    /// Per policy group (first entry index): its sketch of the last epoch.
    pub sketches: BTreeMap<usize, Sketch>,
    /// Per policy name: its `detect` action and whether it is in dry-run.
    pub actions: BTreeMap<String, (Detect, bool)>,
    pub settings: Settings,
    pub history_max: usize,
    pub epoch: u64,
}

/// What a tick changed, for the caller to act on with the core.
#[derive(Default)]
pub struct Outcome {
    /// The policies to defend now, when the set changed.
    pub defend: Option<BTreeSet<String>>,
    pub started: Vec<AnomalyRow>,
    pub ended: Vec<AnomalyRow>,
}

/// The detector's state in the agent.
#[derive(Default)]
pub struct Detection {
    saved: Saved,
    prev: Option<Reading>,
    defended: BTreeSet<String>,
    pub dirty: bool,
    /// Time the detector's task spent working (reading the counters,
    /// ticking, acting), for its own metric and the bench.
    pub busy_ns: u64,
}

/// Epochs are 2^30 ns: a sample's counts are per this many seconds.
fn epoch_secs(epochs: u64) -> f64 {
    (epochs << SKETCH_EPOCH_SHIFT) as f64 / 1e9
}

/// The HyperLogLog estimate of a sketch, with the small-range correction.
pub fn distinct(s: &Sketch) -> f64 {
    let m = s.registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = s.registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let e = alpha * m * m / sum;
    let zeros = s.registers.iter().filter(|&&r| r == 0).count() as f64;
    if e <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        e
    }
}

fn key(policy: &str, ports: Option<(u16, u16)>) -> String {
    match ports {
        None => policy.to_string(),
        Some((lo, hi)) if lo == hi => format!("{policy}:{lo}"),
        Some((lo, hi)) => format!("{policy}:{lo}-{hi}"),
    }
}

fn ports_label(ports: Option<(u16, u16)>) -> Option<String> {
    ports.map(|(lo, hi)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    })
}

fn add(a: &mut PolicyStats, b: &PolicyStats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.syns += b.syns;
    a.new_sources += b.new_sources;
    a.drops += b.drops;
}

fn delta(now: &PolicyStats, before: &PolicyStats) -> PolicyStats {
    PolicyStats {
        packets: now.packets.saturating_sub(before.packets),
        bytes: now.bytes.saturating_sub(before.bytes),
        syns: now.syns.saturating_sub(before.syns),
        new_sources: now.new_sources.saturating_sub(before.new_sources),
        drops: now.drops.saturating_sub(before.drops),
    }
}

/// A sample from an epoch's counts over `secs` seconds.
fn sample(d: &PolicyStats, distinct: f64, secs: f64) -> Sample {
    let share = if d.packets == 0 {
        0.0
    } else {
        d.drops as f64 * 1000.0 / d.packets as f64
    };
    [
        d.packets as f64 / secs,
        d.bytes as f64 / secs,
        d.syns as f64 / secs,
        d.new_sources as f64 / secs,
        distinct / secs,
        share,
    ]
}

impl Detection {
    /// Loads the detectors saved in `state_dir`; a missing file is a first
    /// start, an unreadable one is set aside and reported.
    pub fn load(state_dir: &Path) -> (Self, Option<String>) {
        let path = state_dir.join(FILE);
        let problem = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => {
                    return (
                        Self {
                            saved,
                            ..Self::default()
                        },
                        None,
                    );
                }
                Err(e) => {
                    let aside = path.with_extension("json.unreadable");
                    let _ = std::fs::rename(&path, &aside);
                    Some(format!(
                        "the detector state {} is unreadable ({e}); it was moved to {} and learning starts again",
                        path.display(),
                        aside.display()
                    ))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!(
                "cannot read the detector state {}: {e}; learning starts again",
                path.display()
            )),
        };
        (Self::default(), problem)
    }

    pub fn save(&mut self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&self.saved).map_err(std::io::Error::other)?;
        crate::persist::write_atomic(&state_dir.join(FILE), &bytes)?;
        self.dirty = false;
        Ok(())
    }

    /// Whether a reading is on hand to take the next one's differences from.
    pub fn has_reading(&self) -> bool {
        self.prev.is_some()
    }

    /// Feeds one epoch's reading; `now` is Unix seconds.
    pub fn tick(&mut self, snap: &Snapshot, now: u64) -> Outcome {
        let entries: Vec<(String, u16, u16)> = snap
            .policies
            .iter()
            .zip(&snap.names)
            .map(|(p, n)| (n.clone(), p.port_lo, p.port_hi))
            .collect();
        let prev = self.prev.take();
        self.prev = Some(Reading {
            epoch: snap.epoch,
            entries: entries.clone(),
            stats: snap.stats.clone(),
        });
        let mut out = Outcome::default();
        // A first reading, a changed config or a skipped epoch only sets
        // the base for the next difference.
        let Some(prev) = prev.filter(|p| {
            p.entries == entries && p.epoch + 1 == snap.epoch && p.stats.len() == snap.stats.len()
        }) else {
            self.forget_unwatched(snap);
            self.watch_new_policies(snap);
            return out;
        };
        let secs = epoch_secs(snap.epoch - prev.epoch);
        // Per configured policy: its entries' slots summed, and each slot.
        let mut wanted = BTreeSet::new();
        let mut groups: BTreeMap<usize, Group> = BTreeMap::new();
        for (i, p) in snap.policies.iter().enumerate() {
            if p.flags & policy_flag::OBSERVE == 0 {
                continue;
            }
            let g = groups.entry(p.group as usize).or_default();
            for slot in 0..PORT_SLOTS {
                let idx = i * PORT_SLOTS as usize + slot as usize;
                let (Some(now_s), Some(before)) = (snap.stats.get(idx), prev.stats.get(idx)) else {
                    continue;
                };
                let d = delta(now_s, before);
                add(&mut g.0, &d);
                let ports = if p.flags & policy_flag::HAS_PORTS != 0 {
                    sketch::slot_ports(p.port_lo, p.port_hi, p.port_shift, slot)
                } else if slot == 0 {
                    None
                } else {
                    continue;
                };
                if ports.is_none() && slot != 0 {
                    continue;
                }
                g.1.push((ports, d));
            }
        }
        for (group, (total, slots)) in groups {
            let Some(name) = snap.names.get(group) else {
                continue;
            };
            let est = snap.sketches.get(&group).map_or(0.0, distinct);
            let mut series = vec![(None, sample(&total, est, secs))];
            // A policy with one port (or none) is its own only series.
            if slots.len() > 1 {
                for (ports, d) in &slots {
                    if ports.is_some() {
                        series.push((*ports, sample(d, 0.0, secs)));
                    }
                }
            }
            let (action, dry) = snap
                .actions
                .get(name)
                .copied()
                .unwrap_or((Detect::Off, false));
            for (ports, x) in series {
                let k = key(name, ports);
                wanted.insert(k.clone());
                let w = self
                    .saved
                    .watches
                    .entry(k)
                    .or_insert_with(|| Watch::new(name, ports));
                w.last = x;
                let change = w.detector.observe(&snap.settings, now, &x);
                self.record(
                    change,
                    name,
                    ports,
                    action,
                    dry,
                    now,
                    snap.history_max,
                    &mut out,
                );
            }
        }
        self.saved.watches.retain(|k, _| wanted.contains(k));
        self.dirty = true;
        let defend: BTreeSet<String> = self
            .saved
            .watches
            .values()
            .filter(|w| w.detector.active.is_some())
            .filter(|w| matches!(snap.actions.get(&w.policy), Some((Detect::Defend, _))))
            .map(|w| w.policy.clone())
            .collect();
        if defend != self.defended {
            self.defended = defend.clone();
            out.defend = Some(defend);
        }
        out
    }

    /// Starts a watch for each observed policy that has none yet, so it
    /// shows (learning) from the first reading.
    fn watch_new_policies(&mut self, snap: &Snapshot) {
        for (i, p) in snap.policies.iter().enumerate() {
            if i != p.group as usize || p.flags & policy_flag::OBSERVE == 0 {
                continue;
            }
            if let Some(name) = snap.names.get(i) {
                self.saved
                    .watches
                    .entry(key(name, None))
                    .or_insert_with(|| Watch::new(name, None));
            }
        }
    }

    /// Drops the watches of policies no longer observed (a reload).
    fn forget_unwatched(&mut self, snap: &Snapshot) {
        let observed: BTreeSet<&String> = snap
            .policies
            .iter()
            .zip(&snap.names)
            .filter(|(p, _)| p.flags & policy_flag::OBSERVE != 0)
            .map(|(_, n)| n)
            .collect();
        self.saved
            .watches
            .retain(|_, w| observed.contains(&w.policy));
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each a plain value"
    )]
    fn record(
        &mut self,
        change: Change,
        policy: &str,
        ports: Option<(u16, u16)>,
        action: Detect,
        dry: bool,
        now: u64,
        max: usize,
        out: &mut Outcome,
    ) {
        match change {
            Change::None => {}
            Change::Started(a) => {
                self.saved.next_id += 1;
                let action = match (action, dry) {
                    (Detect::Defend, true) => "defend (dry-run)",
                    (Detect::Defend, false) => "defend",
                    _ => "alert",
                };
                let r = Record {
                    id: self.saved.next_id,
                    policy: policy.to_string(),
                    ports,
                    action: action.into(),
                    started: now,
                    ended: None,
                    fired: a.fired,
                    peak_score: a.peak_score,
                };
                out.started.push(row(&r));
                self.saved.history.push_back(r);
                while self.saved.history.len() > max.max(1) {
                    self.saved.history.pop_front();
                }
            }
            Change::Ended(a) => {
                if let Some(r) = self
                    .saved
                    .history
                    .iter_mut()
                    .rev()
                    .find(|r| r.policy == policy && r.ports == ports && r.ended.is_none())
                {
                    r.ended = Some(now);
                    r.peak_score = r.peak_score.max(a.peak_score);
                    out.ended.push(row(r));
                }
            }
        }
    }

    /// Current and past anomalies, newest first.
    pub fn anomalies(&self) -> Vec<AnomalyRow> {
        self.saved.history.iter().rev().map(row).collect()
    }

    /// The detector of a policy (as a whole) as `explain` and `status` show it.
    pub fn view(&self, policy: &str, s: &Settings, now: u64) -> Option<DetectorView> {
        let w = self.saved.watches.get(policy)?;
        Some(view(w, s, now))
    }

    /// Every policy's detector (as a whole).
    pub fn views(&self, s: &Settings, now: u64) -> Vec<DetectorView> {
        self.saved
            .watches
            .values()
            .filter(|w| w.ports.is_none())
            .map(|w| view(w, s, now))
            .collect()
    }
}

fn row(r: &Record) -> AnomalyRow {
    AnomalyRow {
        id: r.id,
        policy: r.policy.clone(),
        ports: ports_label(r.ports),
        action: r.action.clone(),
        started: r.started,
        ended: r.ended,
        active: r.ended.is_none(),
        peak_score: r.peak_score,
        fired: r
            .fired
            .iter()
            .map(|f| FeatureView {
                feature: f.feature.name().into(),
                value: f.value,
                baseline: f.mean,
                // The deviation the score was counted in.
                deviation: if f.score > 0.0 {
                    (f.value - f.mean) / f.score
                } else {
                    0.0
                },
                score: f.score,
            })
            .collect(),
    }
}

fn view(w: &Watch, s: &Settings, now: u64) -> DetectorView {
    let d = &w.detector;
    let learning_left = d.first_seen.map_or(s.learning, |f| {
        s.learning.saturating_sub(now.saturating_sub(f))
    });
    DetectorView {
        policy: w.policy.clone(),
        learning: d.learning(s, now),
        learning_left_secs: learning_left,
        anomaly: d.active.is_some(),
        features: FEATURES
            .iter()
            .enumerate()
            .map(|(i, f)| FeatureView {
                feature: f.name().into(),
                value: w.last[i],
                baseline: d.baselines[i].mean,
                deviation: d.baselines[i].var.max(0.0).sqrt(),
                score: d.scores[i],
            })
            .collect(),
    }
}

/// The sketch bank that holds the epoch before `epoch`.
pub fn previous_bank(epoch: u64) -> u32 {
    (epoch.wrapping_sub(1) & 1) as u32
}

/// Reads what the detector needs from the core: the policies, their
/// counters, and the finished epoch's sketches (cleared as they are read).
/// On a `fresh` start the current epoch's bank is cleared too: it holds
/// whatever the program counted while no agent read it.
pub fn snapshot(core: &mut crate::state::Core, epoch: u64, fresh: bool) -> Snapshot {
    let policies = core.dp.policies().unwrap_or_default();
    let names = core.policy_names.clone();
    let stats = core.dp.policy_stats(policies.len()).unwrap_or_default();
    let mut sketches = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        if i == p.group as usize && p.flags & policy_flag::OBSERVE != 0 && i < MAX_POLICIES as usize
        {
            if let Ok(s) = core.dp.take_sketch(previous_bank(epoch), i as u32) {
                sketches.insert(i, s);
            }
            if fresh {
                let _ = core
                    .dp
                    .take_sketch(sketch::bank(epoch << SKETCH_EPOCH_SHIFT), i as u32);
            }
        }
    }
    let cfg = &core.cfg.config;
    let dry_all = cfg.agent.dry_run;
    let actions = cfg
        .policies
        .iter()
        .map(|p| {
            let p = p.get_ref();
            (p.name.clone(), (p.detect, dry_all || p.dry_run))
        })
        .collect();
    Snapshot {
        policies,
        names,
        stats,
        sketches,
        actions,
        settings: cfg.detect.settings(),
        history_max: cfg.detect.history,
        epoch,
    }
}

/// Unix seconds, for the detectors' clock.
pub fn now() -> u64 {
    clock::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySpec, Protocol};

    /// A snapshot of two policies: `web` on ports 8000-8031 (defend) and
    /// `dns` without ports (alert); `web_pps` packets a second to port
    /// 8000 and `syns` SYNs among them.
    fn snap(epoch: u64, totals: &mut [PolicyStats; 2], web_pps: u64, syns: u64) -> Snapshot {
        let specs = [
            PolicySpec {
                detect: Detect::Defend,
                ..PolicySpec::simple("web", Protocol::Tcp, &[(8000, 8031)], 100, 100)
            },
            PolicySpec {
                detect: Detect::Alert,
                ..PolicySpec::simple("dns", Protocol::Udp, &[], 100, 100)
            },
        ];
        let abi = crate::policy::kernel_policies(specs.iter());
        let secs = epoch_secs(1);
        totals[0].packets += (web_pps as f64 * secs) as u64;
        totals[0].syns += (syns as f64 * secs) as u64;
        totals[1].packets += (200.0 * secs) as u64;
        let mut stats = vec![PolicyStats::default(); abi.len() * PORT_SLOTS as usize];
        stats[0] = totals[0];
        stats[PORT_SLOTS as usize] = totals[1];
        let settings = Settings {
            learning: 30,
            ..Settings::default()
        };
        Snapshot {
            names: abi.iter().map(|(n, _)| n.clone()).collect(),
            policies: abi.iter().map(|(_, p)| *p).collect(),
            stats,
            sketches: BTreeMap::new(),
            actions: [
                ("web".to_string(), (Detect::Defend, false)),
                ("dns".to_string(), (Detect::Alert, false)),
            ]
            .into(),
            settings,
            history_max: 10,
            epoch,
        }
    }

    #[test]
    fn a_flood_on_one_port_run_starts_an_anomaly_defends_its_policy_and_survives_a_restart() {
        let mut d = Detection::default();
        let mut totals = [PolicyStats::default(); 2];
        for e in 0..60 {
            let out = d.tick(&snap(e, &mut totals, 2000, 50), 1000 + e);
            assert!(out.started.is_empty(), "normal load at {e}");
        }
        // dns, the web policy, and its 32 ports in 16 runs of two.
        let keys: Vec<&String> = d.saved.watches.keys().collect();
        assert_eq!(keys.len(), 18, "{keys:?}");
        assert_eq!(keys[..4], ["dns", "web", "web:8000-8001", "web:8002-8003"]);
        assert_eq!(keys[17], "web:8030-8031");
        let mut started = Vec::new();
        let mut defend = None;
        for e in 60..63 {
            let out = d.tick(&snap(e, &mut totals, 50_000, 40_000), 1000 + e);
            started.extend(out.started);
            defend = defend.or(out.defend);
        }
        let names: Vec<String> = started
            .iter()
            .map(|a| format!("{}:{}", a.policy, a.ports.clone().unwrap_or_default()))
            .collect();
        assert_eq!(names, ["web:", "web:8000-8001"], "{started:?}");
        assert_eq!(defend, Some(BTreeSet::from(["web".to_string()])));
        assert!(started.iter().all(|a| a.action == "defend"));
        let dir = std::env::temp_dir().join(format!("rampart-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        d.save(&dir).unwrap();
        let (back, problem) = Detection::load(&dir);
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(back.anomalies().len(), 2);
        assert!(back.anomalies().iter().all(|a| a.active));
        let learnt = Settings {
            learning: 30,
            ..Settings::default()
        };
        let v = back.view("web", &learnt, 1100).unwrap();
        assert!(v.anomaly && !v.learning);
        std::fs::write(dir.join(FILE), b"{ not json").unwrap();
        let (fresh, problem) = Detection::load(&dir);
        assert!(problem.unwrap().contains("unreadable"));
        assert!(fresh.anomalies().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_sketch_estimates_distinct_sources_within_a_few_percent() {
        for n in [10u64, 100, 1000, 10_000, 100_000] {
            let mut s = Sketch::default();
            for i in 0..n {
                let a = rampart_common::abi::Addr {
                    words: [0x0a00_0000 + i, 0],
                };
                let (r, rank) = sketch::place(&a, 42);
                s.registers[r] = s.registers[r].max(rank);
            }
            let e = distinct(&s);
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.2, "{n} sources estimated as {e}");
        }
    }
}
