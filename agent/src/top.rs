//! Top sources by dropped packets, from the sampled drop events, with the
//! Space-Saving algorithm: a bounded table where a newcomer replaces the
//! source with the smallest count and inherits that count plus one. Any
//! source sending more than 1/CAPACITY of the samples is always kept, so a
//! spoofed flood of one-sample sources cannot push a heavy hitter out.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use crate::api::TopRow;

const CAPACITY: usize = 8192;

#[derive(Default)]
pub struct Top {
    counts: HashMap<IpAddr, (u64, u8)>,
    /// (count, source), to find the smallest in O(log n).
    order: BTreeSet<(u64, IpAddr)>,
    /// Each sample stands for this many drops (the sampling rate).
    pub scale: u64,
}

impl Top {
    /// A table for drops sampled one in `scale`.
    pub fn new(scale: u64) -> Self {
        Self {
            scale,
            ..Self::default()
        }
    }

    pub fn record(&mut self, src: IpAddr, reason: u8) {
        let count = match self.counts.get(&src) {
            Some((c, _)) => {
                self.order.remove(&(*c, src));
                c + 1
            }
            None if self.counts.len() < CAPACITY => 1,
            None => match self.order.pop_first() {
                Some((min, evicted)) => {
                    self.counts.remove(&evicted);
                    min + 1
                }
                None => 1,
            },
        };
        self.counts.insert(src, (count, reason));
        self.order.insert((count, src));
    }

    pub fn top(&self, n: usize) -> Vec<TopRow> {
        let mut v: Vec<_> = self.counts.iter().collect();
        v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(ip, (c, r))| TopRow {
                source: ip.to_string(),
                dropped: c * self.scale.max(1),
                reason: rampart_common::abi::reason::NAMES
                    .get(*r as usize)
                    .copied()
                    .unwrap_or("?")
                    .into(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_stays_bounded() {
        let mut t = Top::new(10);
        for _ in 0..5 {
            t.record("192.0.2.1".parse().unwrap(), 2);
        }
        t.record("192.0.2.2".parse().unwrap(), 4);
        for i in 0..20_000u32 {
            t.record(IpAddr::from(i.to_be_bytes()), 4);
        }
        assert!(t.counts.len() <= CAPACITY);
        assert_eq!(t.order.len(), t.counts.len());
        let top = t.top(1);
        assert_eq!(top[0].source, "192.0.2.1");
        assert_eq!(top[0].reason, "blocklist");
    }
}
