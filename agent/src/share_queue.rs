//! What this node owes the CrowdSec local API: the decisions its data plane
//! and operators made, queued until the LAPI has taken them. The queue is
//! bounded (the oldest entry goes first, and is counted), persisted in the
//! state directory so a restart loses none, and remembers which bans it has
//! already offered, so a ban seen both as an event and in a table scan is
//! sent once.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::prefix::Prefix;

/// Every scenario this project pushes starts with this; the node's name and
/// the policy follow (`rampart/<node>/<policy>`).
pub const SCENARIO_PREFIX: &str = "rampart/";
/// The scenario part for operators' `block add --share`.
pub const MANUAL: &str = "manual";

/// The scenario of a decision from `node` for `what` (a policy, or
/// [`MANUAL`]).
pub fn scenario(node: &str, what: &str) -> String {
    format!("{SCENARIO_PREFIX}{node}/{what}")
}

/// The node a scenario names, if it is one of ours.
pub fn node_of(scenario: &str) -> Option<&str> {
    scenario.strip_prefix(SCENARIO_PREFIX)?.split('/').next()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A ban decision on `prefix` until `until` (unix seconds).
    Add {
        prefix: Prefix,
        until: u64,
        scenario: String,
    },
    /// Removes this node's decisions on `prefix` under `scenario`.
    Delete { prefix: Prefix, scenario: String },
}

impl Op {
    fn prefix(&self) -> &Prefix {
        match self {
            Op::Add { prefix, .. } | Op::Delete { prefix, .. } => prefix,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub op: Op,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShareQueue {
    items: VecDeque<Queued>,
    next_seq: u64,
    /// Bans offered already: prefix → the ban's end (monotonic ns).
    offered: BTreeMap<Prefix, u64>,
    /// Blocks shared by `block add --share`, so `block del` lifts them
    /// upstream too.
    shared_blocks: BTreeSet<Prefix>,
    /// Entries pushed out by a full queue, ever.
    pub overflowed: u64,
    #[serde(skip)]
    max: usize,
    /// Changed since the last save.
    #[serde(skip)]
    pub dirty: bool,
}

impl ShareQueue {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            ..Self::default()
        }
    }

    /// The queue saved at `path`, or an empty one; a file that cannot be
    /// read is reported and set aside, never fatal.
    pub fn load(path: &Path, max: usize) -> (Self, Option<String>) {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::new(max), None),
            Err(e) => {
                return (
                    Self::new(max),
                    Some(format!("cannot read {}: {e}", path.display())),
                );
            }
        };
        match serde_json::from_slice::<Self>(&text) {
            Ok(mut q) => {
                q.set_max(max);
                (q, None)
            }
            Err(e) => {
                let aside = path.with_extension("json.bad");
                let _ = std::fs::rename(path, &aside);
                (
                    Self::new(max),
                    Some(format!(
                        "{} is not a share queue ({e}); moved to {}",
                        path.display(),
                        aside.display()
                    )),
                )
            }
        }
    }

    /// Writes the queue atomically (temp file, fsync, rename), private.
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::persist::write_atomic(path, &bytes)?;
        self.dirty = false;
        Ok(())
    }

    /// A smaller cap drops the oldest entries (counted).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        while self.items.len() > self.max {
            self.items.pop_front();
            self.overflowed += 1;
            self.dirty = true;
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, op: Op) {
        if self.items.len() >= self.max {
            self.items.pop_front();
            self.overflowed += 1;
        }
        self.items.push_back(Queued {
            seq: self.next_seq,
            op,
        });
        self.next_seq += 1;
        self.dirty = true;
    }

    /// Queues a ban the data plane started, unless this one (same prefix,
    /// same end) was offered before. Returns whether it was queued.
    pub fn offer_ban(
        &mut self,
        prefix: Prefix,
        expires_ns: u64,
        until: u64,
        scenario: String,
    ) -> bool {
        if self.offered.get(&prefix) == Some(&expires_ns) {
            return false;
        }
        self.offered.insert(prefix, expires_ns);
        self.push(Op::Add {
            prefix,
            until,
            scenario,
        });
        true
    }

    /// Queues an operator's block for sharing.
    pub fn share_block(&mut self, prefix: Prefix, until: u64, scenario: String) {
        self.shared_blocks.insert(prefix);
        self.push(Op::Add {
            prefix,
            until,
            scenario,
        });
    }

    /// After `block del`: a shared block is deleted upstream too (and a
    /// queued add of it never goes). Returns whether it was shared.
    pub fn unshare_block(&mut self, prefix: &Prefix, scenario: String) -> bool {
        if !self.shared_blocks.remove(prefix) {
            return false;
        }
        self.items
            .retain(|q| !matches!(&q.op, Op::Add { prefix: p, scenario: s, .. } if p == prefix && *s == scenario));
        self.push(Op::Delete {
            prefix: *prefix,
            scenario,
        });
        true
    }

    /// The oldest `max` entries, left in the queue until [`Self::ack`].
    pub fn batch(&self, max: usize) -> Vec<Queued> {
        self.items.iter().take(max).cloned().collect()
    }

    /// The LAPI took every entry up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        let before = self.items.len();
        self.items.retain(|q| q.seq > seq);
        self.dirty |= self.items.len() != before;
    }

    /// Forgets bans that have ended, and drops queued adds that would
    /// arrive expired.
    pub fn prune(&mut self, now_ns: u64, now_unix: u64) {
        let before = (self.offered.len(), self.items.len());
        self.offered.retain(|_, end| *end > now_ns);
        self.items
            .retain(|q| !matches!(q.op, Op::Add { until, .. } if until <= now_unix));
        self.dirty |= before != (self.offered.len(), self.items.len());
    }

    /// Entries about `prefix` waiting to go (for tests and `explain`).
    pub fn pending_for(&self, prefix: &Prefix) -> usize {
        self.items
            .iter()
            .filter(|q| q.op.prefix() == prefix)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn a_ban_is_offered_once_and_a_new_ban_of_the_same_source_again() {
        let mut q = ShareQueue::new(10);
        assert!(q.offer_ban(p("192.0.2.1"), 100, 1_000, "rampart/a/syn".into()));
        assert!(
            !q.offer_ban(p("192.0.2.1"), 100, 1_000, "rampart/a/syn".into()),
            "the event and the table scan see one ban"
        );
        assert!(q.offer_ban(p("192.0.2.1"), 200, 2_000, "rampart/a/syn".into()));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut q = ShareQueue::new(3);
        for i in 0..5u64 {
            q.offer_ban(p(&format!("192.0.2.{i}")), 10 + i, 100, "s".into());
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.overflowed, 2);
        let b = q.batch(10);
        assert_eq!(b[0].op.prefix(), &p("192.0.2.2"));
    }

    #[test]
    fn ack_removes_what_was_sent_even_if_the_front_moved() {
        let mut q = ShareQueue::new(3);
        for i in 0..3u64 {
            q.offer_ban(p(&format!("192.0.2.{i}")), 10 + i, 100, "s".into());
        }
        let sent = q.batch(2);
        // While the push is in flight, two more arrive and push one out.
        q.offer_ban(p("192.0.2.8"), 20, 100, "s".into());
        q.offer_ban(p("192.0.2.9"), 21, 100, "s".into());
        q.ack(sent.last().unwrap().seq);
        let left: Vec<_> = q.batch(10).into_iter().map(|x| *x.op.prefix()).collect();
        // .0 and .1 went (one pushed out, both sent); .2 was never sent.
        assert_eq!(left, vec![p("192.0.2.2"), p("192.0.2.8"), p("192.0.2.9")]);
        assert_eq!(q.overflowed, 2);
    }

    #[test]
    fn unsharing_cancels_a_queued_add_and_deletes_upstream() {
        let mut q = ShareQueue::new(10);
        q.share_block(p("198.51.100.0/24"), 500, "rampart/a/manual".into());
        assert!(!q.unshare_block(&p("203.0.113.1"), "rampart/a/manual".into()));
        assert!(q.unshare_block(&p("198.51.100.0/24"), "rampart/a/manual".into()));
        let b = q.batch(10);
        assert_eq!(b.len(), 1);
        assert!(matches!(b[0].op, Op::Delete { .. }));
    }

    #[test]
    fn prune_forgets_ended_bans_and_expired_adds() {
        let mut q = ShareQueue::new(10);
        q.offer_ban(p("192.0.2.1"), 100, 1_000, "s".into());
        q.offer_ban(p("192.0.2.2"), 300, 3_000, "s".into());
        q.prune(200, 2_000);
        assert_eq!(q.len(), 1);
        assert!(q.offer_ban(p("192.0.2.1"), 100, 1_000, "s".into()));
    }

    #[test]
    fn the_queue_survives_a_save_and_a_bad_file_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("rampart-share-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("share-queue.json");
        let mut q = ShareQueue::new(10);
        q.offer_ban(p("2001:db8::/64"), 100, 1_000, "rampart/a/syn".into());
        q.share_block(p("192.0.2.0/24"), 2_000, "rampart/a/manual".into());
        q.save(&path).unwrap();
        let (back, err) = ShareQueue::load(&path, 10);
        assert!(err.is_none());
        assert_eq!(back.batch(10), q.batch(10));
        assert!(back.shared_blocks.contains(&p("192.0.2.0/24")));
        std::fs::write(&path, b"{not json").unwrap();
        let (fresh, err) = ShareQueue::load(&path, 10);
        assert!(fresh.is_empty());
        assert!(err.unwrap().contains("moved to"));
        assert!(dir.join("share-queue.json.bad").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scenarios_name_their_node() {
        assert_eq!(node_of(&scenario("node-a", "syn")), Some("node-a"));
        assert_eq!(node_of("crowdsecurity/ssh-bf"), None);
    }
}
