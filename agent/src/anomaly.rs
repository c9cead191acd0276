//! A statistical detector of traffic that departs from a service's normal:
//! per policy, an exponentially weighted mean and variance of each feature,
//! sampled once a second. A feature's score is how many deviations the
//! current second lies above its mean. An anomaly starts when a score
//! passes the threshold, and its value the feature's absolute floor, for
//! `consecutive` seconds in a row. It ends when every score has stayed
//! under half the threshold for `calm` seconds in a row (hysteresis).
//!
//! The baselines are frozen while an anomaly is active, and for any second
//! that scores above the threshold, so an attack cannot teach itself in as
//! normal. Nothing fires during the learning period after first start.
//! The clock is injected (`now` in seconds), and the state serialises, so a
//! restart keeps what was learnt.
use serde::{Deserialize, Serialize};

/// What is measured each second, per policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    Packets,
    Bytes,
    Syns,
    NewSources,
    DistinctSources,
    /// Dropped packets per thousand.
    DropShare,
}

pub const FEATURES: [Feature; 6] = [
    Feature::Packets,
    Feature::Bytes,
    Feature::Syns,
    Feature::NewSources,
    Feature::DistinctSources,
    Feature::DropShare,
];

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Feature::Packets => "packets",
            Feature::Bytes => "bytes",
            Feature::Syns => "syns",
            Feature::NewSources => "new_sources",
            Feature::DistinctSources => "distinct_sources",
            Feature::DropShare => "drop_share",
        }
    }
}

/// One second's features, indexed as [`FEATURES`].
pub type Sample = [f64; FEATURES.len()];

/// The detector's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The baselines' half-life, seconds.
    pub half_life: f64,
    /// Score (deviations above the mean) that counts as anomalous.
    pub threshold: f64,
    /// Seconds in a row above the threshold before an anomaly starts.
    pub consecutive: u32,
    /// Seconds in a row under half the threshold before it ends.
    pub calm: u32,
    /// Seconds after first start in which nothing fires.
    pub learning: u64,
    /// Per feature: a value below this never counts as anomalous, however
    /// it scores (a quiet service's 3 SYNs a second are not a flood).
    pub floors: Sample,
    /// The deviation never counts as less than this share of the mean, so
    /// a very steady feature does not score a small change as huge: with
    /// 0.5 and a threshold of 6, a feature must reach about 4x its
    /// baseline to count, whatever its noise; a service's ordinary bursts
    /// of 2x or 3x do not.
    pub min_relative_deviation: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            half_life: 600.0,
            threshold: 6.0,
            consecutive: 2,
            calm: 10,
            learning: 3600,
            floors: [1000.0, 1.0e6, 200.0, 200.0, 200.0, 100.0],
            min_relative_deviation: 0.5,
        }
    }
}

/// An exponentially weighted mean and variance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewm {
    pub mean: f64,
    pub var: f64,
    pub seeded: bool,
}

impl Ewm {
    /// Folds in `x` with weight `alpha` (West's incremental form).
    fn update(&mut self, x: f64, alpha: f64) {
        if !self.seeded {
            *self = Self {
                mean: x,
                var: 0.0,
                seeded: true,
            };
            return;
        }
        let diff = x - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
    }

    /// Deviations of `x` above the mean (never below zero: a drop in
    /// traffic is not an attack).
    pub fn score(&self, x: f64, min_relative: f64) -> f64 {
        if !self.seeded {
            return 0.0;
        }
        let sd = self.var.sqrt().max(self.mean.abs() * min_relative).max(1.0);
        ((x - self.mean) / sd).max(0.0)
    }
}

/// An anomaly, current or past.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Seconds (the injected clock).
    pub started: u64,
    pub ended: Option<u64>,
    /// The features that fired it, with their value, baseline mean and score.
    pub fired: Vec<Fired>,
    /// The highest score seen while it lasted.
    pub peak_score: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub feature: Feature,
    pub value: f64,
    pub mean: f64,
    pub score: f64,
}

/// What one second changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    None,
    Started(Anomaly),
    Ended(Anomaly),
}

/// One policy's detector.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Detector {
    pub baselines: [Ewm; FEATURES.len()],
    /// When learning began (the first sample).
    pub first_seen: Option<u64>,
    last_seen: Option<u64>,
    above: u32,
    below: u32,
    pub active: Option<Anomaly>,
    /// The latest scores, for `explain` and `status`.
    #[serde(skip)]
    pub scores: Sample,
}

impl Detector {
    pub fn learning(&self, s: &Settings, now: u64) -> bool {
        self.first_seen
            .is_none_or(|f| now.saturating_sub(f) < s.learning)
    }

    /// Feeds one second's sample taken at `now`.
    pub fn observe(&mut self, s: &Settings, now: u64, x: &Sample) -> Change {
        let first = *self.first_seen.get_or_insert(now);
        // The weight of one sample grows with the time since the last, so
        // a gap (the agent was down) weighs as the seconds it spans.
        let dt = self
            .last_seen
            .map_or(1.0, |l| now.saturating_sub(l).clamp(1, 3600) as f64);
        self.last_seen = Some(now);
        let alpha = 1.0 - 0.5f64.powf(dt / s.half_life.max(1.0));
        let mut hot = Vec::new();
        for (i, f) in FEATURES.iter().enumerate() {
            let score = self.baselines[i].score(x[i], s.min_relative_deviation);
            self.scores[i] = score;
            if score >= s.threshold && x[i] >= s.floors[i] {
                hot.push(Fired {
                    feature: *f,
                    value: x[i],
                    mean: self.baselines[i].mean,
                    score,
                });
            }
        }
        let calm = self.scores.iter().all(|&sc| sc < s.threshold / 2.0);
        // Frozen while an anomaly lasts, and for any hot second.
        if self.active.is_none() && hot.is_empty() {
            for (i, b) in self.baselines.iter_mut().enumerate() {
                b.update(x[i], alpha);
            }
        }
        if now.saturating_sub(first) < s.learning {
            return Change::None;
        }
        let peak = hot.iter().map(|h| h.score).fold(0.0, f64::max);
        match &mut self.active {
            None => {
                self.above = if hot.is_empty() { 0 } else { self.above + 1 };
                if self.above >= s.consecutive.max(1) {
                    self.above = 0;
                    self.below = 0;
                    let a = Anomaly {
                        started: now,
                        ended: None,
                        fired: hot,
                        peak_score: peak,
                    };
                    self.active = Some(a.clone());
                    return Change::Started(a);
                }
                Change::None
            }
            Some(a) => {
                a.peak_score = a.peak_score.max(peak);
                self.below = if calm { self.below + 1 } else { 0 };
                if self.below < s.calm.max(1) {
                    return Change::None;
                }
                self.below = 0;
                match self.active.take() {
                    Some(mut a) => {
                        a.ended = Some(now);
                        Change::Ended(a)
                    }
                    None => Change::None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A normal load: `pps` packets a second with a little noise, and
    /// SYNs, sources and bytes in proportion.
    fn normal(pps: f64, t: u64) -> Sample {
        let noise = 1.0 + 0.03 * ((t as f64 * 0.7).sin() + (t as f64 * 1.3).cos()) / 2.0;
        let p = pps * noise;
        [p, p * 800.0, p * 0.05, p * 0.01, p * 0.02, 2.0]
    }

    fn settings() -> Settings {
        Settings {
            learning: 1800,
            ..Settings::default()
        }
    }

    /// Runs `secs` seconds from `start` and returns the changes seen.
    fn run(
        d: &mut Detector,
        s: &Settings,
        start: u64,
        secs: u64,
        f: impl Fn(u64) -> Sample,
    ) -> Vec<(u64, Change)> {
        (start..start + secs)
            .filter_map(|t| match d.observe(s, t, &f(t)) {
                Change::None => None,
                c => Some((t, c)),
            })
            .collect()
    }

    #[test]
    fn a_slow_daily_ramp_raises_no_alarm() {
        let s = settings();
        let mut d = Detector::default();
        run(&mut d, &s, 0, 3600, |t| normal(5000.0, t));
        // 4x over 12 hours.
        let ramp = |t: u64| normal(5000.0 * 4f64.powf((t - 3600) as f64 / 43_200.0), t);
        let changes = run(&mut d, &s, 3600, 43_200, ramp);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(
            d.baselines[0].mean > 15_000.0,
            "the baseline followed the ramp"
        );
    }

    #[test]
    fn a_tenfold_step_alarms_within_n_plus_one_seconds_and_names_the_features() {
        let s = settings();
        let mut d = Detector::default();
        run(&mut d, &s, 0, 3600, |t| normal(5000.0, t));
        let changes = run(&mut d, &s, 3600, 60, |t| {
            let mut x = normal(5000.0, t);
            x[0] *= 10.0;
            x[2] *= 10.0;
            x
        });
        let (at, Change::Started(a)) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert!(*at < 3600 + u64::from(s.consecutive) + 1, "started at {at}");
        let names: Vec<_> = a.fired.iter().map(|f| f.feature).collect();
        assert_eq!(names, vec![Feature::Packets, Feature::Syns]);
        assert!(a.fired[0].score >= s.threshold);
    }

    #[test]
    fn an_hour_long_attack_does_not_move_the_baseline_and_ends_with_hysteresis() {
        let s = settings();
        let mut d = Detector::default();
        run(&mut d, &s, 0, 3600, |t| normal(5000.0, t));
        let before = d.baselines;
        let attack = |t: u64| {
            let mut x = normal(5000.0, t);
            x[3] = 50_000.0;
            x
        };
        let changes = run(&mut d, &s, 3600, 3600, attack);
        assert_eq!(changes.len(), 1, "one anomaly, still active: {changes:?}");
        assert_eq!(d.baselines, before, "frozen while it lasted");
        let after = run(&mut d, &s, 7200, 60, |t| normal(5000.0, t));
        let (at, Change::Ended(a)) = &after[0] else {
            panic!("{after:?}")
        };
        assert_eq!(*at, 7200 + u64::from(s.calm) - 1);
        assert_eq!(a.started, 3600 + u64::from(s.consecutive) - 1);
    }

    #[test]
    fn nothing_fires_while_learning_or_below_the_floor() {
        let s = settings();
        let mut d = Detector::default();
        run(&mut d, &s, 0, 600, |t| normal(5000.0, t));
        let early = run(&mut d, &s, 600, 30, |t| normal(50_000.0, t));
        assert!(early.is_empty(), "learning: {early:?}");
        let mut quiet = Detector::default();
        run(&mut quiet, &s, 0, 3600, |t| normal(10.0, t));
        // 20x, but 200 packets a second is under the floor.
        let small = run(&mut quiet, &s, 3600, 30, |t| normal(200.0, t));
        assert!(small.is_empty(), "{small:?}");
    }

    #[test]
    fn a_restart_keeps_what_was_learnt() {
        let s = settings();
        let mut d = Detector::default();
        run(&mut d, &s, 0, 3600, |t| normal(5000.0, t));
        let saved = serde_json::to_string(&d).unwrap();
        let mut back: Detector = serde_json::from_str(&saved).unwrap();
        // JSON keeps the figures to the last bit or two.
        for (b, o) in back.baselines.iter().zip(&d.baselines) {
            assert!(
                (b.mean - o.mean).abs() <= o.mean.abs() * 1e-12,
                "{b:?} {o:?}"
            );
            assert!((b.var - o.var).abs() <= o.var.abs() * 1e-12, "{b:?} {o:?}");
        }
        assert!(!back.learning(&s, 3700), "no new learning period");
        let changes = run(&mut back, &s, 3700, 10, |t| {
            let mut x = normal(5000.0, t);
            x[0] *= 10.0;
            x
        });
        assert!(
            matches!(changes.first(), Some((_, Change::Started(_)))),
            "{changes:?}"
        );
    }
}
