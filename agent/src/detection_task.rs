//! The detector's task: wakes just after each sketch epoch ends, reads the
//! program's counters under the core lock, runs the detectors outside it,
//! and carries out what they decided (log, audit, metrics, defence).
use std::{sync::Arc, time::Duration};

use rampart_common::{abi::SKETCH_EPOCH_SHIFT, sketch};

use crate::{api::AnomalyRow, clock, detection, shared::Shared, sync::lock};

/// How far into an epoch the task reads the one before: past any CPU's
/// coarse clock lag, so no packet still counts into the finished bank.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the detectors are saved while nothing starts or ends.
const SAVE_EVERY: u64 = 60;

/// Time until `SETTLE` past the next epoch boundary.
fn until_next_epoch(now_ns: u64) -> Duration {
    let len = 1u64 << SKETCH_EPOCH_SHIFT;
    let next = (sketch::epoch(now_ns) + 1) * len;
    Duration::from_nanos(next - now_ns) + SETTLE
}

pub async fn run(shared: Arc<Shared>) {
    let mut since_save = 0u64;
    loop {
        tokio::time::sleep(until_next_epoch(clock::mono_ns())).await;
        let began = std::time::Instant::now();
        let epoch = sketch::epoch(clock::mono_ns());
        let fresh = !lock(&shared.detection).has_reading();
        let snap = {
            let mut core = lock(&shared.core);
            detection::snapshot(&mut core, epoch, fresh)
        };
        let out = lock(&shared.detection).tick(&snap, detection::now());
        for a in &out.started {
            announce(&shared, a, true);
        }
        for a in &out.ended {
            announce(&shared, a, false);
        }
        if let Some(set) = out.defend {
            let r = lock(&shared.core).set_defended(set.clone());
            match r {
                Ok(()) => {
                    tracing::info!(policies = ?set, "detector defence now covers these policies")
                }
                Err(e) => tracing::error!("engaging the detector's defence failed: {e}"),
            }
        }
        {
            let mut d = lock(&shared.detection);
            d.busy_ns += began.elapsed().as_nanos() as u64;
            let views = d.views(&snap.settings, detection::now());
            shared
                .metrics
                .set_detector(&views, &d.anomalies(), d.busy_ns);
        }
        since_save += 1;
        let changed = !out.started.is_empty() || !out.ended.is_empty();
        if changed || since_save >= SAVE_EVERY {
            since_save = 0;
            save(&shared);
        }
    }
}

/// Writes the detectors to the state directory (also at shutdown).
pub fn save(shared: &Shared) {
    let mut d = lock(&shared.detection);
    if !d.dirty {
        return;
    }
    if let Err(e) = d.save(&shared.state_dir) {
        tracing::warn!("saving the detector state failed: {e}");
    }
}

/// Logs an anomaly's start or end and records it in the audit log.
fn announce(shared: &Shared, a: &AnomalyRow, started: bool) {
    let fired: Vec<String> = a
        .fired
        .iter()
        .map(|f| {
            format!(
                "{} {:.0}/s against a baseline of {:.0} (score {:.1})",
                f.feature, f.value, f.baseline, f.score
            )
        })
        .collect();
    let ports = a.ports.as_deref().unwrap_or("all");
    if started {
        tracing::warn!(
            policy = %a.policy,
            ports,
            action = %a.action,
            fired = %fired.join("; "),
            "traffic anomaly started"
        );
    } else {
        tracing::info!(
            policy = %a.policy,
            ports,
            action = %a.action,
            peak_score = a.peak_score,
            "traffic anomaly ended"
        );
    }
    let args = serde_json::to_value(a).unwrap_or_default();
    let what = if started {
        "anomaly.start"
    } else {
        "anomaly.end"
    };
    if let Err(e) = shared.audit.record(None, None, what, &args, &a.action) {
        tracing::warn!("audit log write failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_wakes_just_past_the_next_epoch() {
        let len = 1u64 << SKETCH_EPOCH_SHIFT;
        assert_eq!(
            until_next_epoch(3 * len),
            Duration::from_nanos(len) + SETTLE
        );
        assert_eq!(
            until_next_epoch(3 * len + len - 1),
            Duration::from_nanos(1) + SETTLE
        );
    }
}
