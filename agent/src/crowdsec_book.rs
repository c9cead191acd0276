//! Which CrowdSec decisions hold each blocklist entry. CrowdSec can hold
//! several decisions on one address (two scenarios, a manual ban beside an
//! automatic one); the bouncer keeps one entry for them, which must stay
//! while any of them lives and expire with the longest.
use std::collections::{BTreeMap, HashMap};

use crate::prefix::Prefix;

/// A decision without an id (an older local API) stands for every
/// decision on its value.
const NO_ID: i64 = -1;

/// The live decisions per entry: id to expiry (unix seconds).
#[derive(Debug, Default)]
pub struct DecisionBook {
    live: HashMap<Prefix, BTreeMap<i64, u64>>,
}

/// What one poll changes in the blocklist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Entries to add or keep, with the expiry of their longest decision.
    pub hold: Vec<(Prefix, u64)>,
    /// Entries whose last decision went.
    pub lift: Vec<Prefix>,
}

impl DecisionBook {
    /// Applies one poll: `new` decisions (target, id, expiry) and `deleted`
    /// ones (target, id). A startup poll carries the whole set, so what it
    /// does not name is forgotten (the caller reconciles the list).
    pub fn apply(
        &mut self,
        new: &[(Prefix, Option<i64>, u64)],
        deleted: &[(Prefix, Option<i64>)],
        startup: bool,
        now: u64,
    ) -> Changes {
        if startup {
            self.live.clear();
        }
        for (p, id, expires) in new {
            self.live
                .entry(*p)
                .or_default()
                .insert(id.unwrap_or(NO_ID), *expires);
        }
        let mut changes = Changes::default();
        for (p, id) in deleted {
            let Some(ids) = self.live.get_mut(p) else {
                changes.lift.push(*p);
                continue;
            };
            match id {
                Some(id) => {
                    ids.remove(id);
                }
                None => ids.clear(),
            }
            ids.retain(|_, expires| *expires > now);
            if ids.is_empty() {
                self.live.remove(p);
                changes.lift.push(*p);
            }
        }
        let mut held: Vec<Prefix> = new.iter().map(|(p, _, _)| *p).collect();
        held.sort_unstable_by_key(Prefix::order_key);
        held.dedup();
        changes.hold = held
            .into_iter()
            .filter_map(|p| {
                let longest = self.live.get(&p)?.values().max().copied()?;
                Some((p, longest))
            })
            .collect();
        changes.lift.sort_unstable_by_key(Prefix::order_key);
        changes.lift.dedup();
        changes
    }

    /// Entries the book holds (for reconciling after a startup poll).
    pub fn holds(&self, p: &Prefix) -> bool {
        self.live.contains_key(p)
    }

    pub fn clear(&mut self) {
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn an_entry_stays_while_any_decision_on_it_lives() {
        let mut b = DecisionBook::default();
        let x = p("192.0.2.7");
        let c = b.apply(&[(x, Some(1), 1000), (x, Some(2), 5000)], &[], true, 10);
        assert_eq!(
            c.hold,
            vec![(x, 5000)],
            "the longest decision sets the expiry"
        );
        let c = b.apply(&[], &[(x, Some(2))], false, 20);
        assert!(c.lift.is_empty(), "decision 1 still covers it: {c:?}");
        let c = b.apply(&[], &[(x, Some(1))], false, 30);
        assert_eq!(c.lift, vec![x]);
    }

    #[test]
    fn a_deletion_of_an_unknown_entry_lifts_it_and_expired_decisions_do_not_hold() {
        let mut b = DecisionBook::default();
        let (x, y) = (p("192.0.2.7"), p("198.51.100.0/24"));
        assert_eq!(b.apply(&[], &[(y, Some(9))], false, 0).lift, vec![y]);
        b.apply(&[(x, Some(1), 100), (x, Some(2), 50)], &[], false, 0);
        // Decision 2 expired at 50; deleting 1 at 60 leaves nothing.
        assert_eq!(b.apply(&[], &[(x, Some(1))], false, 60).lift, vec![x]);
    }

    #[test]
    fn a_deletion_without_an_id_lifts_the_value_and_startup_starts_over() {
        let mut b = DecisionBook::default();
        let x = p("192.0.2.7");
        b.apply(&[(x, Some(1), 100), (x, Some(2), 100)], &[], false, 0);
        assert_eq!(b.apply(&[], &[(x, None)], false, 1).lift, vec![x]);
        b.apply(&[(x, Some(3), 100)], &[], false, 1);
        b.apply(&[], &[], true, 2);
        assert!(
            !b.holds(&x),
            "a startup poll that does not name it forgets it"
        );
    }

    #[test]
    fn deleted_and_added_again_in_one_poll_stays() {
        let mut b = DecisionBook::default();
        let x = p("192.0.2.7");
        b.apply(&[(x, Some(1), 100)], &[], false, 0);
        let c = b.apply(&[(x, Some(2), 200)], &[(x, Some(1))], false, 1);
        assert!(c.lift.is_empty() && c.hold == vec![(x, 200)], "{c:?}");
    }
}
